#!/usr/bin/env python
"""BTCV (Synapse ``RawData/Training/{img,label}``, optional ``RawData/Testing/img``) -> MSD layout + standard split.

Usage: python tools/convert_btcv.py SRC DST [--overwrite]
SRC is the unpacked download (or its RawData / Training folder); DST gets imagesTr/, labelsTr/, imagesTs/,
dataset.json (13 organs, BTCV numbering) and splits.json (fold 0 = the standard 24/6 split).
"""

from __future__ import annotations

import argparse
import sys

from volmae.cli.common import run_main
from volmae.data.convert import convert_btcv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("convert_btcv", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="the BTCV download (Abdomen/, RawData/ or Training/)")
    parser.add_argument("dst", help="output task folder (MSD layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace files already in DST")
    args = parser.parse_args(argv)

    def body() -> None:
        meta = convert_btcv(args.src, args.dst, overwrite=args.overwrite)
        print(f"{args.dst}: {meta['numTraining']} labeled + {meta['numTest']} unlabeled cases, dataset.json written")

    return run_main("convert_btcv", body)


if __name__ == "__main__":
    sys.exit(main())
