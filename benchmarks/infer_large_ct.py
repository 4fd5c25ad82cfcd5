"""Peak memory and time of whole ``volmae-infer`` runs (on the CPU unless ``--device cuda``): the small real CT of
``totalseg_examples`` and a synthetic 512 x 512 x 300 CT, with the wall time split into load, preprocess, network,
stitch, postprocess, invert and save (the per-phase seconds volmae-infer prints).

Writes a synthetic abdominal-CT-like volume (512 x 512 x 300 int16, 0.78 x 0.78 x 1.5 mm: body ellipse of soft
tissue with brighter organs and bone), copies ``bundles/btcv`` into a temporary folder with randomly initialised
weights (the shipped UNETR ViT-B/16, 14 classes, 96^3 window), runs ``volmae-infer`` on each scan in a child
process and prints wall time, phase split, the child's peak resident memory and the label map's shape. Run by hand:

    python benchmarks/infer_large_ct.py [--shape 512 512 300] [--spacing 0.78 0.78 1.5] [--no-real] [--compile]
        [--cpu-bf16] [--device cpu|cuda] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from common import cpu_features, cpu_model

from volmae.data.paths import dataset_path

REPO = Path(__file__).resolve().parents[1]


def synthetic_ct(shape, spacing) -> nib.Nifti1Image:
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    vol = np.full(shape, -1000, np.int16)
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    vol[body] = 40
    vol[((x - 0.3) / 0.25) ** 2 + (y / 0.2) ** 2 + (z / 0.5) ** 2 < 1] = 60  # liver-like
    vol[(x / 0.08) ** 2 + ((y + 0.45) / 0.08) ** 2 < 1] = 700  # spine-like
    vol += np.random.default_rng(0).normal(0, 10, shape).astype(np.int16) * body
    return nib.Nifti1Image(vol, np.diag([*spacing, 1.0]))


def run_infer(scan: Path, bundle: Path, out: Path, extra: list[str]) -> dict:
    """``volmae-infer`` in a child process: wall time, the child's peak RSS, and the phase split it prints."""
    cmd = [sys.executable, "-m", "volmae.cli.infer", str(scan), "--bundle", str(bundle), "-o", str(out), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    run = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; the largest child so far
    phases = {}
    for line in run.stdout.splitlines():
        if line.strip().startswith("seconds:"):
            phases = {k: float(v) for k, v in (item.split() for item in line.split(":", 1)[1].split(","))}
    seg = nib.load(out)
    return {
        "input": str(scan.name),
        "input_shape": list(nib.load(scan).shape),
        "output_shape": list(seg.shape),
        "wall_s": round(wall, 1),
        "phases_s": phases,
        "startup_and_other_s": round(wall - sum(phases.values()), 1),  # imports, model build, bundle parsing
        "peak_rss_gib": round(peak / 2**20, 2) if peak > before else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.78, 0.78, 1.5])
    ap.add_argument(
        "--real",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also segment the small real CT of totalseg_examples (first, when the data is present)",
    )
    ap.add_argument("--compile", action="store_true", help="pass --compile to volmae-infer")
    ap.add_argument("--cpu-bf16", action="store_true", help="pass --cpu-bf16 to volmae-infer (pays on AMX CPUs)")
    ap.add_argument("--device", default="cpu", help="volmae-infer's --device (cuda: AMP, the issue's GPU target)")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    extra = ["--device", args.device] + ["--compile"] * args.compile + ["--cpu-bf16"] * args.cpu_bf16
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = tmp / "btcv"
        shutil.copytree(
            REPO / "volmae" / "bundles" / "btcv", bundle, symlinks=True, ignore=shutil.ignore_patterns("models")
        )
        (bundle / "models").mkdir()
        from volmae.networks import build_unetr

        torch.manual_seed(0)
        torch.save(build_unetr("vit-base", 1, 14, (96, 96, 96)).model.state_dict(), bundle / "models" / "model.pt")
        real = dataset_path("totalseg_examples")
        if args.real and real is not None:
            results.append(run_infer(real / "example_ct_sm.nii.gz", bundle, tmp / "real_seg.nii.gz", extra))
        elif args.real:
            print("totalseg_examples not found ($VOLMAE_DATA or ../shared/data): the real CT is skipped")
        scan = tmp / "ct.nii.gz"
        nib.save(synthetic_ct(tuple(args.shape), args.spacing), scan)
        results.append(run_infer(scan, bundle, tmp / "seg.nii.gz", extra))
    out = {
        "command": " ".join(["python", "benchmarks/infer_large_ct.py", *sys.argv[1:]]),
        "volmae_infer": " ".join(["volmae-infer", "SCAN", "--bundle", "btcv(random weights)", *extra]),
        "synthetic_spacing_mm": args.spacing,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "results": results,
    }
    print(json.dumps(out, indent=2))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
