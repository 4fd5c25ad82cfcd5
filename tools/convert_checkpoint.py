#!/usr/bin/env python
"""Checkpoints between volmae and plain MONAI networks.

  python tools/convert_checkpoint.py to-monai   runs/train/model.pt monai_unetr.pt [--encoder-only]
      volmae segmentation model -> MONAI UNETR state dict (patch 16, 12 blocks, trained with --no-skip-norm);
      an MAE checkpoint (or --encoder-only) -> MONAI ViT state dict (also loads into UNETR(...).vit).
      The constructor arguments are printed and written beside the weights as <OUT>.json.
  python tools/convert_checkpoint.py from-monai monai_unetr.pt model.pt [--img-size 96 96 96] [--num-heads 12]
      [--preprocessing ct] [--dataset-dir TASK]   (class names from TASK/dataset.json)
      MONAI UNETR state dict -> volmae model.pt for volmae-evaluate and the Predictor.

MONAI weights need no conversion for fine-tuning: volmae-train --pretrained reads them directly.
"""

from __future__ import annotations

import argparse
import json
import sys

from volmae.cli.common import run_main
from volmae.data.datalist import load_msd_datalist
from volmae.networks.interop import export_to_monai, import_monai_unetr
from volmae.networks.weights import read_checkpoint
from volmae.utils.io import atomic_save, atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("convert_checkpoint", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    to = sub.add_parser("to-monai", help="volmae model.pt -> MONAI UNETR / ViT state dict")
    to.add_argument("src")
    to.add_argument("dst")
    to.add_argument("--encoder-only", action="store_true", help="export the ViT encoder alone (MONAI ViT keys)")
    fr = sub.add_parser("from-monai", help="MONAI UNETR state dict -> volmae model.pt")
    fr.add_argument("src")
    fr.add_argument("dst")
    fr.add_argument("--img-size", type=int, nargs=3, default=None, help="training ROI (default: the token cube)")
    fr.add_argument("--num-heads", type=int, default=12, help="attention heads (not stored in weights; default 12)")
    fr.add_argument("--preprocessing", default="ct", help="volmae preprocessing preset (default: ct)")
    fr.add_argument("--dataset-dir", default=None, help="MSD task folder whose dataset.json names the classes")
    args = parser.parse_args(argv)

    def body() -> None:
        ckpt = read_checkpoint(args.src)
        if args.direction == "to-monai":
            cls, kwargs, state = export_to_monai(ckpt, encoder_only=args.encoder_only)
            atomic_save(state, args.dst)
            atomic_write_json(f"{args.dst}.json", {"class": f"monai.networks.nets.{cls}", "kwargs": kwargs})
            print(f"{args.dst}: monai.networks.nets.{cls}(**{json.dumps(kwargs)})")
        else:
            labels = load_msd_datalist(args.dataset_dir).labels if args.dataset_dir else None
            out = import_monai_unetr(ckpt, args.img_size, args.num_heads, args.preprocessing, labels)
            atomic_save(out, args.dst)
            enc = out["config"]["encoder"]
            print(f"{args.dst}: volmae UNETR, ROI {enc['img_size']}, {len(out['task']['labels'])} classes")

    return run_main("convert_checkpoint", body)


if __name__ == "__main__":
    sys.exit(main())
