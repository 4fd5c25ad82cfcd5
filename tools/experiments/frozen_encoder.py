"""Diagnostic for issue 2 (cause 3 of docs/hippocampus_study.md): UNETR fine-tuned with its ViT encoder frozen at its
(random or pretrained) initialisation. Usage: python frozen_encoder.py OUT_DIR [volmae-train flags...]"""
import sys
import volmae.training.engine as eng
from volmae.cli.train import main

_build = eng.build_segmenter
def frozen(*a, **k):
    m = _build(*a, **k)
    for p in m.encoder.parameters():
        p.requires_grad_(False)
    return m
eng.build_segmenter = frozen
sys.exit(main(sys.argv[1:]))
