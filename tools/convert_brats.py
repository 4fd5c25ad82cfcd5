#!/usr/bin/env python
"""BraTS per-modality files -> MSD layout: one multi-channel NIfTI per case, labels in MSD Task01's convention.

Usage: python tools/convert_brats.py SRC DST [--layout auto|brats2021|brats2023|brats2013-deepmedic] [--overwrite]
Labels become 1 edema, 2 non-enhancing core, 3 enhancing (TC = {2, 3}, WT = {1, 2, 3}, ET = {3}); cases without a
segmentation go to imagesTs/ (unlabeled, usable for MAE pretraining). The brats2013-deepmedic layout's images are
set to 0 outside each case's brainmask (DeepMedic z-scored them with the air at a constant; official releases have 0).
"""

from __future__ import annotations

import argparse
import sys

from volmae.cli.common import run_main
from volmae.data.convert import BRATS_LAYOUTS, convert_brats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("convert_brats", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder holding one sub-folder per case")
    parser.add_argument("dst", help="output task folder (MSD layout)")
    parser.add_argument("--layout", default="auto", choices=["auto", *BRATS_LAYOUTS], help="file naming")
    parser.add_argument("--overwrite", action="store_true", help="replace files already in DST")
    args = parser.parse_args(argv)

    def body() -> None:
        meta = convert_brats(args.src, args.dst, layout=args.layout, overwrite=args.overwrite)
        print(
            f"{args.dst}: {meta['numTraining']} labeled + {meta['numTest']} unlabeled {meta['source_layout']} cases, "
            f"{len(meta['modality'])} channels"
        )

    return run_main("convert_brats", body)


if __name__ == "__main__":
    sys.exit(main())
