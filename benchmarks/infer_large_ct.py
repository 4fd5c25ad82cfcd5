"""Peak memory and time of ``volmae-infer`` on a CT-sized scan on the CPU (issue: "a 512 x 512 x 300 CT without
exhausting memory").

Writes a synthetic abdominal-CT-like volume (512 x 512 x 300 int16, 0.78 x 0.78 x 1.5 mm: body ellipse of soft
tissue with brighter organs and bone), copies ``bundles/btcv`` into a temporary folder with randomly initialised
weights (the shipped UNETR ViT-B/16, 14 classes, 96^3 window), runs ``volmae-infer`` on it in a child process and
prints wall time, the child's peak resident memory and the label map's shape. Run by hand:

    python benchmarks/infer_large_ct.py [--shape 512 512 300] [--spacing 0.78 0.78 1.5] [--out-json FILE]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.78, 0.78, 1.5])
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = tmp / "ct.nii.gz"
        nib.save(synthetic_ct(tuple(args.shape), args.spacing), scan)
        bundle = tmp / "btcv"
        shutil.copytree(REPO / "bundles" / "btcv", bundle, symlinks=True, ignore=shutil.ignore_patterns("models"))
        (bundle / "models").mkdir()
        from volmae.networks import build_unetr

        torch.manual_seed(0)
        torch.save(build_unetr("vit-base", 1, 14, (96, 96, 96)).state_dict(), bundle / "models" / "model.pt")
        cmd = [
            sys.executable,
            "-m",
            "volmae.cli.infer",
            str(scan),
            "--bundle",
            str(bundle),
            "-o",
            str(tmp / "seg.nii.gz"),
            "--device",
            "cpu",
            "-q",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        seg = nib.load(tmp / "seg.nii.gz")
        result = {
            "command": " ".join(["volmae-infer", "ct.nii.gz", "--bundle", "btcv(random weights)", "--device", "cpu"]),
            "input_shape": list(args.shape),
            "input_spacing_mm": args.spacing,
            "output_shape": list(seg.shape),
            "wall_s": round(wall, 1),
            "peak_rss_gib": round(peak_gib, 2),
            "torch_threads": torch.get_num_threads(),
        }
    print(json.dumps(result, indent=2))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
