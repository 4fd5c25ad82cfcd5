"""MONAI bundles: the adapters the ``volmae/bundles/<task>/configs`` call (:mod:`~volmae.bundle.workflow`), and the
specs and renderers that write those bundles (:mod:`~volmae.bundle.specs`, :mod:`~volmae.bundle.configs`,
:mod:`~volmae.bundle.make`)."""

from volmae.bundle.workflow import (
    BundleModel,
    Inference,
    Trainer,
    bundle_root,
    evaluate,
    fold_items,
    input_items,
    unlabeled_items,
)

__all__ = [
    "BundleModel",
    "evaluate",
    "Inference",
    "Trainer",
    "bundle_root",
    "fold_items",
    "input_items",
    "unlabeled_items",
]
