"""Data-parallel throughput: the same ``volmae-pretrain`` (or ``volmae-train``) job as one process and as N ranks
under ``torchrun``, at the same global batch, on real volumes; volumes per second and the ratio, in one run.

Variants (each a fresh run in a temporary folder; the first epoch, which includes start-up effects, is not timed):

- ``1 x T``: one process with ``T = --cores`` threads, global batch ``--batch`` volumes;
- ``N x T/N``: ``torchrun --nproc_per_node N``, ``T/N`` threads per rank, ``--batch / N`` volumes per rank
  (CPU: gloo; with GPUs: NCCL, one GPU per rank and ``--cores`` ignored);
- ``1 x 1``: one process on one thread, the per-core reference (CPU only).

Run by hand (real data from ``$VOLMAE_DATA/msd_hippocampus``):

    python benchmarks/distributed.py [--stage pretrain] [--ranks 2] [--cores 2] [--batch 8] [--epochs 3]
        [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO, run_meta

from volmae.data import dataset_path


def run(stage: str, ranks: int, threads: int, batch: int, args, out: Path) -> dict:
    """One training job; returns its median epoch time (epochs after the first) and volumes/s."""
    cmd = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    )
    cmd += ["-m", f"volmae.cli.{stage}", "--dataset-dir", str(args.dataset_dir), "--out-dir", str(out)]
    cmd += ["--roi-size", *map(str, args.roi), "--preset", args.preset, "--epochs", str(args.epochs)]
    cmd += ["--batch-size", str(batch), "--device", args.device, "--quiet", "--num-workers", "0"]
    cmd += ["--num-pictures", "0"] if stage == "pretrain" else ["--val-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    volumes = _volumes(stage, args.dataset_dir, ranks)
    epoch_s = statistics.median(h["seconds"] for h in history[1:]) if len(history) > 1 else history[0]["seconds"]
    return {
        "ranks": ranks,
        "threads_per_rank": threads,
        "batch_per_rank": batch,
        "epoch_s": epoch_s,
        "volumes_per_epoch": volumes,
        "volumes_per_s": volumes / epoch_s,
        "wall_s": time.perf_counter() - t,
        "final_loss": history[-1]["loss"],
    }


def _volumes(stage: str, dataset_dir: Path, ranks: int) -> int:
    """Volumes one epoch visits: the training images of fold 0, padded to a multiple of the ranks."""
    from volmae.data.datalist import load_datalist, pretraining_items, split_fold

    dl = load_datalist(dataset_dir)
    n = len(pretraining_items(dl, 0, True) if stage == "pretrain" else split_fold(dl, 0)[0])
    return n + (-n) % ranks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["pretrain", "train"], default="pretrain")
    ap.add_argument("--dataset-dir", type=Path, default=dataset_path("msd_hippocampus"))
    ap.add_argument("--preset", default="vit-tiny")
    ap.add_argument("--roi", type=int, nargs=3, default=[40, 56, 40])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=8, help="global batch (volumes per optimizer step)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    if args.dataset_dir is None or not Path(args.dataset_dir).is_dir():
        raise SystemExit("no hippocampus data: set VOLMAE_DATA or pass --dataset-dir")
    if args.batch % args.ranks:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --ranks {args.ranks}")
    cpu = args.device == "cpu"
    variants = [(1, args.cores, args.batch), (args.ranks, max(1, args.cores // args.ranks), args.batch // args.ranks)]
    if cpu:
        variants.append((1, 1, args.batch))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (ranks, threads, batch) in enumerate(variants):
            rows.append(run(args.stage, ranks, threads, batch, args, Path(tmp) / f"v{i}"))
    base = rows[0]["volumes_per_s"]
    print(f"{args.stage}, {args.preset} at {'x'.join(map(str, args.roi))}, global batch {args.batch}, {args.device}")
    print("| processes x threads | batch per process | epoch s | volumes/s | vs 1 process | final loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['ranks']} x {r['threads_per_rank']} | {r['batch_per_rank']} | {r['epoch_s']:.1f} | "
            f"{r['volumes_per_s']:.2f} | {r['volumes_per_s'] / base:.2f}x | {r['final_loss']:.4f} |"
        )
    if args.out_json:
        meta = {**run_meta(argparse.Namespace(device=args.device, threads=args.cores)), "stage": args.stage}
        Path(args.out_json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
