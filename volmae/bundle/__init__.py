"""Helpers for MONAI bundles: what the ``bundles/<task>/configs`` call, and loading a bundle for ``volmae-infer``."""

from volmae.bundle.workflow import (
    bundle_root,
    device,
    end_distributed,
    fold_items,
    input_items,
    model_file,
    optimizer,
    unlabeled_items,
    with_pretrained,
)

__all__ = [
    "bundle_root",
    "device",
    "end_distributed",
    "fold_items",
    "input_items",
    "model_file",
    "optimizer",
    "unlabeled_items",
    "with_pretrained",
]
