"""``volmae-pretrain``: masked self-pretraining on a task's images (labels unused): MAE for a ViT preset, masked volume
for nnFormer (or the whole UNETR with --method masked-unetr), S3D sparse masking of the whole U-Net for a ResEnc
preset."""

from __future__ import annotations

import sys

from volmae.cli.common import stage_main
from volmae.engine.pretrain import PretrainConfig, pretrain


def _run(cfg: PretrainConfig) -> str:
    result = pretrain(cfg)
    return "\n".join([f"pretrained model: {result.model_path}"] + [f"picture: {p}" for p in result.pictures])


main = stage_main("volmae-pretrain", __doc__, PretrainConfig, ["dataset_dir"], _run)

if __name__ == "__main__":
    sys.exit(main())
