"""HD95 of one class on a BraTS-sized grid: MONAI's ``compute_hausdorff_distance(percentile=95)`` vs volmae's
``hd95`` (the same edge voxels and exact Euclidean distances; a distance transform where the edges are dense), timed in
the same process, alternating, with the values compared.

Cases on a 240 x 240 x 155 grid at 1 mm (or ``--shape``), truth a compact 40 x 50 x 40 "tumour":
- ``overcall``: a barely trained model's answer, blobs over ``--density`` of the whole volume (smoothed noise
  thresholded; a UNETR after 2 steps on real BraTS 2013 called 44-74 % of a case's voxels tumour in such blobs);
- ``good``: a good answer, the truth dilated by one voxel and shifted by two;
- ``far``: a correct answer plus a false positive of its size 60 voxels away.
With the real BraTS 2013 cases present (``VOLMAE_DATA``), also ``brats_TC`` / ``brats_WT`` / ``brats_ET``: the regions
of a UNETR-Ti trained for 2 steps at 3 mm on one case (seed 0), predicted on another in its 240 x 240 x 155 grid, the
barely trained model every study evaluates first, against that case's truth.
Run by hand: ``python benchmarks/hd95.py [--rounds 3] [--density 0.5] [--no-real] [--out-json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
from common import cpu_model
from monai.metrics import compute_hausdorff_distance
from scipy.ndimage import binary_dilation, gaussian_filter

from volmae.evaluation.metrics import hd95


def cases(shape: tuple[int, int, int], density: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    true = np.zeros(shape, bool)
    c = [s // 2 for s in shape]
    true[c[0] - 20 : c[0] + 20, c[1] - 25 : c[1] + 25, c[2] - 20 : c[2] + 20] = True
    noise = gaussian_filter(rng.random(shape, dtype=np.float32), sigma=2)
    far = true.copy()
    far[c[0] - 100 : c[0] - 60, c[1] - 25 : c[1] + 25, c[2] - 20 : c[2] + 20] = True
    return {
        "overcall": (noise > np.quantile(noise, 1 - density), true),
        "good": (np.roll(binary_dilation(true), 2, axis=0), true),
        "far": (far, true),
    }


def brats_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The real-data cases (see the module docstring), or none when the BraTS 2013 folder is absent."""
    import os
    import tempfile
    from pathlib import Path

    import nibabel as nib

    from volmae.data.convert import BRATS_REGIONS, convert_brats
    from volmae.data.paths import dataset_path
    from volmae.engine.finetune import FinetuneConfig, finetune
    from volmae.evaluation.evaluate import EvaluateConfig, evaluate

    root = dataset_path("brats2013_deepmedic")
    if root is None:
        print("brats2013_deepmedic not found (VOLMAE_DATA): synthetic cases only", file=sys.stderr)
        return {}
    tmp = Path(tempfile.mkdtemp(prefix="hd95_"))
    (tmp / "src").mkdir()
    train, held_out = sorted((root / "train").iterdir())[:2]
    for c in (train, held_out):
        os.symlink(c, tmp / "src" / c.name)
    convert_brats(tmp / "src", tmp / "task")
    (tmp / "task" / "splits.json").write_text(json.dumps({"folds": [[held_out.name]]}))
    ft = finetune(FinetuneConfig(dataset_dir=str(tmp / "task"), out_dir=str(tmp / "ft"), preprocessing="mri",
                                 pixdim=(3.0, 3.0, 3.0), roi_size=(32, 32, 32), steps=2, batch_size=1, feature_size=8,
                                 val_every=0, device="cpu", quiet=True))  # fmt: skip
    evaluate(EvaluateConfig(str(ft.model_path), str(tmp / "task"), str(tmp / "ev"), device="cpu", quiet=True,
                            save_predictions=True))  # fmt: skip
    pred = np.asarray(nib.load(tmp / "ev" / "predictions" / f"{held_out.name}.nii.gz").dataobj)
    true = np.asarray(nib.load(tmp / "task" / "labelsTr" / f"{held_out.name}.nii.gz").dataobj)
    return {f"brats_{k}": (np.isin(pred, v), np.isin(true, v)) for k, v in BRATS_REGIONS.items()}


def monai_hd95(pred: np.ndarray, true: np.ndarray) -> float:
    t = [torch.from_numpy(m)[None, None].float() for m in (pred, true)]
    return float(compute_hausdorff_distance(*t, include_background=True, percentile=95).reshape(-1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-real", action="store_true", help="synthetic cases only")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    all_cases = cases(tuple(args.shape), args.density) | ({} if args.no_real else brats_cases())
    rows = []
    print(f"{'case':<10}{'MONAI s':>10}{'volmae s':>10}{'ratio':>8}{'MONAI mm':>10}{'volmae mm':>11}")
    for name, (pred, true) in all_cases.items():
        times: dict[str, list[float]] = {"monai": [], "volmae": []}
        values = {}
        for _ in range(args.rounds):
            for variant, fn in (("monai", monai_hd95), ("volmae", hd95)):
                t0 = time.perf_counter()
                values[variant] = fn(pred, true)
                times[variant].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"case": name, "pred_voxels": int(pred.sum()), "true_voxels": int(true.sum()),
               "monai_s": med["monai"], "volmae_s": med["volmae"], "ratio": med["monai"] / med["volmae"],
               "monai_mm": values["monai"], "volmae_mm": values["volmae"], "times": times}  # fmt: skip
        rows.append(row)
        print(f"{name:<10}{med['monai']:>10.2f}{med['volmae']:>10.2f}{row['ratio']:>7.2f}x"
              f"{values['monai']:>10.3f}{values['volmae']:>11.3f}")  # fmt: skip
        if not np.isclose(values["monai"], values["volmae"], rtol=1e-5):
            print(f"  values differ: {values}", file=sys.stderr)
            return 1
    if args.out_json:
        meta = {"command": " ".join(sys.argv), "cpu": cpu_model(), "threads": args.threads, "shape": args.shape,
                "density": args.density, "rounds": args.rounds}  # fmt: skip
        with open(args.out_json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
