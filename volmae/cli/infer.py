"""``volmae-infer``: segment scans (NIfTI files, folders of them, DICOM series folders) with a trained model and write
each label map in its input's original space: as NIfTI and / or, for a DICOM series, as a DICOM Segmentation object
(DICOM-SEG) that references the series; optionally with per-class volumes (--statistics).

Examples:
  volmae-infer t1.nii.gz --bundle hippocampus                           -> ./t1_seg.nii.gz (the hippocampus bundle)
  volmae-infer t1.nii.gz --bundle hippocampus -o t1_seg.nii.gz
  volmae-infer scan.nii.gz --model runs/train/model.pt                  -> ./scan_seg.nii.gz
  volmae-infer scans/ -o predictions/ --model model.pt --tta-flips 0     -> predictions/<case>.nii.gz
  volmae-infer dicom_study/ -o seg.nii.gz --model model.pt --per-class --save-probabilities
  volmae-infer dicom_study/ -o out/ --bundle hippocampus --output-type nifti dicom_seg
                                                                         -> out/dicom_study.nii.gz, out/dicom_study.dcm
  volmae-infer scans/ -o out/ --model model.pt --statistics              -> out/<case>.nii.gz, <case>_statistics.json
  volmae-infer --list-classes --bundle brats

A model must be named: --model FILE or --bundle NAME (volmae-download --list shows the bundles and whether their
weights are installed; released weights are downloaded on first use unless VOLMAE_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import sys

from volmae.artifact.bundles import no_model_message
from volmae.cli.common import add_config_args, config_from_args, run_main
from volmae.cli.helps import HELPS
from volmae.errors import ConfigError, DataError
from volmae.inference.infer import InferConfig, infer, model_classes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        "volmae-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="*", help="NIfTI file(s), DICOM series folder(s) or folder(s) of scans")
    parser.add_argument("-o", "--output", default=None, help=HELPS["output"])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-scan lines")
    parser.add_argument("--list-classes", action="store_true", help="print the model's classes and exit")
    add_config_args(parser, InferConfig, HELPS, skip=["inputs", "output", "quiet"])
    args = parser.parse_args(argv)

    def body() -> None:
        if args.list_classes:
            for k, name in model_classes(args.model, args.bundle).items():
                print(f"{k:3d}  {name}")
            return
        if not args.inputs:
            parser.error("give at least one input scan (or --list-classes)")
        if not args.model and not args.bundle:  # answered before any scan is read
            raise ConfigError(no_model_message())
        cfg = config_from_args(InferConfig, args)
        done = infer(cfg)
        failed = [c for c in done if c.status != "ok"]
        if failed:
            raise DataError(
                f"{len(failed)} of {len(done)} scan(s) failed (the others were written): "
                + "; ".join(f"{c.case}: {c.error}" for c in failed[:5])
                + (" ..." if len(failed) > 5 else "")
            )
        if not cfg.quiet:
            print(f"{len(done)} scan(s) segmented")

    return run_main("volmae-infer", body)


if __name__ == "__main__":
    sys.exit(main())
