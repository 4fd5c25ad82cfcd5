"""Diagnostic for issue 2 (docs/hippocampus_study.md, cause 3): ``volmae-train`` with UNETR's ViT encoder frozen at
its initialisation (random, or the ``--pretrained`` weights); only the convolutional stem, skip paths and decoder
train. Usage: ``python tools/experiments/frozen_encoder.py [volmae-train flags...]``."""

import sys

import volmae.engine.finetune as engine
from volmae.cli.train import main

_build = engine.build_segmenter


def _frozen(*args, **kwargs):
    built = _build(*args, **kwargs)
    built.model.encoder.requires_grad_(False)  # param_groups leaves frozen parameters out of the optimizer
    return built


engine.build_segmenter = _frozen
sys.exit(main(sys.argv[1:]))
