"""volmae-model: look at, convert and move volmae model files.

  volmae-model info runs/train/model.pt                       what the model is, for what, and where it came from
  volmae-model convert old/model.pt model.pt                  a file of an earlier volmae -> today's format
  volmae-model to-bundle runs/train/model.pt bundles/hippocampus
                                                              its weights as the bundle's models/model.pt (checked
                                                              against the bundle's network_def)
  volmae-model export-monai runs/train/model.pt unetr.pt [--encoder-only]
                                                              a volmae UNETR (patch 16, --no-skip-norm) -> MONAI UNETR
                                                              state dict, its constructor arguments in unetr.pt.json;
                                                              an MAE or --encoder-only -> MONAI ViT state dict
  volmae-model import-monai unetr.pt model.pt [--img-size 96 96 96] [--num-heads 12] [--preprocessing ct]
                                              [--dataset-dir TASK]
                                                              a MONAI UNETR state dict -> a volmae segmentation model
                                                              (class names from TASK/dataset.json)

MONAI weights need no conversion for fine-tuning: volmae-train --pretrained reads them directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from volmae.cli.common import run_main

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "volmae-model", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="describe a model file").add_argument("model")
    conv = sub.add_parser("convert", help="rewrite a model file of an earlier volmae in today's format")
    conv.add_argument("src")
    conv.add_argument("dst")
    tob = sub.add_parser("to-bundle", help="put a model's weights into a bundle as models/model.pt")
    tob.add_argument("model")
    tob.add_argument("bundle", help="bundle name or folder")
    tob.add_argument("--overwrite", action="store_true", help="replace an existing models/model.pt")
    exp = sub.add_parser("export-monai", help="volmae model -> MONAI UNETR / ViT state dict")
    exp.add_argument("src")
    exp.add_argument("dst")
    exp.add_argument("--encoder-only", action="store_true", help="export the ViT encoder alone (MONAI ViT keys)")
    imp = sub.add_parser("import-monai", help="MONAI UNETR state dict -> volmae model file")
    imp.add_argument("src")
    imp.add_argument("dst")
    imp.add_argument("--img-size", type=int, nargs=3, default=None, help="training ROI (default: the token cube)")
    imp.add_argument("--num-heads", type=int, default=12, help="attention heads (not stored in weights; default 12)")
    imp.add_argument("--preprocessing", default="ct", help="volmae preprocessing preset (default: ct)")
    imp.add_argument("--dataset-dir", default=None, help="MSD task folder whose dataset.json names the classes")
    return parser


def _to_bundle(model: str, bundle: str, overwrite: bool) -> str:
    from volmae.artifact import ModelArtifact, find_bundle
    from volmae.artifact.bundles import bundle_weights_path, check_fits_bundle, write_bundle_weights
    from volmae.errors import ConfigError

    art = ModelArtifact.load(model, role="segmentation")
    root = find_bundle(bundle)
    dst = bundle_weights_path(root)
    if dst.exists() and not overwrite:
        raise ConfigError(f"{dst} exists; pass --overwrite to replace it")
    check_fits_bundle(art, root, model)
    write_bundle_weights(art.weights, root, overwrite=True)  # the plain state dict of network_def
    return f"{dst}: the weights of {model} ({art.provenance.summary()})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> None:
        from volmae.artifact import ModelArtifact, export_to_monai, import_monai_unetr, read_file
        from volmae.errors import ConfigError
        from volmae.utils.io import atomic_save, atomic_write_json

        if args.command == "info":
            print(ModelArtifact.load(args.model).describe())
        elif args.command == "convert":
            art = ModelArtifact.load(args.src)
            if Path(args.dst).resolve() == Path(args.src).resolve():
                raise ConfigError(f"{args.dst}: write the converted file elsewhere (keep the original)")
            art.save(args.dst)
            print(f"{args.dst}: {art.kind}, format {art.to_dict()['version']} (from {args.src})")
        elif args.command == "to-bundle":
            print(_to_bundle(args.model, args.bundle, args.overwrite))
        elif args.command == "export-monai":
            cls, kwargs, state = export_to_monai(ModelArtifact.load(args.src), encoder_only=args.encoder_only)
            atomic_save(state, args.dst)
            atomic_write_json(f"{args.dst}.json", {"class": f"monai.networks.nets.{cls}", "kwargs": kwargs})
            print(f"{args.dst}: monai.networks.nets.{cls}(**{json.dumps(kwargs)})")
        else:
            from volmae.data.datalist import load_msd_datalist

            labels = load_msd_datalist(args.dataset_dir).labels if args.dataset_dir else None
            art = import_monai_unetr(
                read_file(args.src), args.img_size, args.num_heads, args.preprocessing, labels, source=args.src
            )
            art.save(args.dst)
            print(f"{args.dst}: volmae UNETR, ROI {list(art.network.window)}, {len(art.task.labels)} classes")

    return run_main("volmae-model", body)


if __name__ == "__main__":
    sys.exit(main())
