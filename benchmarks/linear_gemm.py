"""Linear layers on the CPU: PyTorch's default (``F.linear``: MKL) vs ``volmae.utils.onednn`` (oneDNN), per shape.

For each number of rows ``M`` (tokens x batch) and layer ``K -> N`` (in -> out features), times the forward product
``M K @ K N`` (+ bias) both ways, and forward + backward (input and weight gradients) of ``nn.Linear`` against
:class:`~volmae.utils.onednn.OneDNNLinear`. The two run interleaved in one process (A, B, A, B, ...), so a noisy
machine slows both alike, and the figure is the median over the pairs of ``time(MKL) / time(oneDNN)``: above 1,
oneDNN is faster. ``*`` marks the layers ``use_onednn_linears`` turns (both widths >= ``min_features``). The rows
cover what volmae trains on the CPU: an MAE encoder on visible tokens (ViT-B, two 96^3 crops: 108 rows), its decoder
(432), UNETR fine-tuning (432-864) and ``vit-tiny`` (192 wide). Run by hand:

    python benchmarks/linear_gemm.py [--rows 108 216 432 864 1728] [--reps 15] [--threads 2] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from common import add_common_args, interleaved, median_ratio, run_meta

from volmae.utils.onednn import OneDNNLinear, onednn_linear

LAYERS = [(768, 2304), (768, 3072), (3072, 768), (768, 768), (384, 1536), (1536, 384), (384, 1152), (192, 576),
          (192, 768), (768, 192)]  # fmt: skip


def paired_ratio(a, b, reps: int) -> float:
    """Median over ``reps`` interleaved pairs of ``time(a) / time(b)``, after one warm-up call of each."""
    a(), b()
    times, _ = interleaved({"a": lambda i: a(), "b": lambda i: b()}, reps)
    return median_ratio(times["a"], times["b"])


def cell(m: int, k: int, n: int, what: str, reps: int) -> float:
    """``time(MKL) / time(oneDNN)`` of one layer ``K -> N`` on ``M`` rows, ``what`` = forward or forward+backward."""
    x = torch.randn(m, k, requires_grad=what != "forward")
    plain = nn.Linear(k, n)
    if what == "forward":
        with torch.no_grad():
            return paired_ratio(
                lambda: F.linear(x, plain.weight, plain.bias), lambda: onednn_linear(x, plain.weight, plain.bias), reps
            )
    fast, g = OneDNNLinear(k, n), torch.randn(m, n)
    return paired_ratio(lambda: plain(x).backward(g), lambda: fast(x).backward(g), reps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[108, 216, 432, 864, 1728])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--min-features", type=int, default=384, help="the rule's width, for the * marks")
    add_common_args(ap)
    args = ap.parse_args()
    if args.device != "cpu":
        raise SystemExit("--device: this benchmark is about the CPU kernels (oneDNN is not used on CUDA)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = [f"{k}>{n}{'*' if min(k, n) >= args.min_features else ''}" for k, n in LAYERS]
    results = []
    for what in ("forward", "forward+backward"):
        print(f"\n{what}: MKL time / oneDNN time (median of {args.reps} interleaved pairs), {args.threads} threads")
        print("| rows | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        for m in args.rows:
            cells = []
            for k, n in LAYERS:
                r = cell(m, k, n, what, args.reps)
                cells.append(r)
                results.append({"pass": what, "rows": m, "in": k, "out": n, "mkl_over_onednn": r})
            print(f"| {m} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"meta": run_meta(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
