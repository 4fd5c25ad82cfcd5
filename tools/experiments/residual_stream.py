#!/usr/bin/env python
"""Residual-stream scale of a ViT encoder, block by block: std of the token features after each block.

Used in docs/hippocampus_study.md to compare MAE pretraining runs: an encoder whose first block already blows the
stream up (std ~20-50 where a fresh encoder has ~1.5) leaves the later blocks only small relative updates.
Input: a fixed N(0, 1) volume (seed 0) at the checkpoint's ROI, the scale z-scored MRI has.

Usage: python tools/experiments/residual_stream.py CHECKPOINT [CHECKPOINT ...] [--fresh PRESET]
"""

from __future__ import annotations

import argparse

import torch

from volmae.artifact import ModelArtifact
from volmae.networks.registry import build_encoder


@torch.no_grad()
def block_stds(encoder, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, encoder.in_channels, *encoder.img_size, generator=g)
    t = encoder.embed(x)
    out = [float(t.std())]
    for blk in encoder.blocks:
        t = blk(t)
        out.append(float(t.std()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--fresh", default=None, help="also show a freshly initialised encoder of this preset")
    ap.add_argument("--roi-size", type=int, nargs=3, default=(40, 56, 40))
    args = ap.parse_args()
    rows = []
    if args.fresh:
        torch.manual_seed(0)
        rows.append((f"fresh {args.fresh}", build_encoder(args.fresh, img_size=args.roi_size).model.eval()))
    for path in args.checkpoints:
        rows.append((path, ModelArtifact.load(path).build().encoder))
    for name, enc in rows:
        print(f"{name}: embed " + " ".join(f"{s:.1f}" for s in block_stds(enc)))


if __name__ == "__main__":
    main()
