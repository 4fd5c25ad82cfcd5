"""Functions the bundle configs (``bundles/<task>/configs/*.json``) call through ``$volmae.bundle...`` expressions.

MONAI's config system provides the workflow (ignite trainer / evaluator, handlers, transforms, inferers); what it
lacks, and is written here, is: locating the bundle folder from the config file being run (so outputs land in the
bundle, not in the current directory), MSD ``dataset.json`` + ``splits.json`` folds as plain datalists (the lists
MONAI Label overrides), loading a pretrained MAE encoder into the network, and an optimiser with layer-wise lr decay.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from volmae.data.datalist import label_fraction, load_msd_datalist, pretraining_items, split_fold
from volmae.errors import ConfigError
from volmae.utils.optim import adamw, param_groups

__all__ = [
    "bundle_root",
    "fold_items",
    "unlabeled_items",
    "input_items",
    "with_pretrained",
    "optimizer",
    "model_file",
    "device",
    "end_distributed",
]

logger = logging.getLogger("volmae.bundle")


def bundle_root(default: str | os.PathLike | None = None) -> str:
    """The folder of the bundle whose config is being run, as an absolute path.

    MONAI configs have no "directory of this file" variable, and MONAI zoo bundles assume the current directory is the
    bundle. Here the running ``ConfigWorkflow`` (``python -m monai.bundle run``, MONAI Label, tests) is found on the
    call stack and its ``config_root_path`` used: ``<bundle>/configs/train.json`` -> ``<bundle>``, and the top-level
    ``<bundle>/train.json`` -> ``<bundle>``. Outside a workflow, ``default`` (else an error saying to set
    ``bundle_root``).
    """
    from monai.bundle import ConfigWorkflow

    for frame in inspect.stack(context=0):
        wf = frame.frame.f_locals.get("self")
        if isinstance(wf, ConfigWorkflow):
            root = Path(wf.config_root_path)
            return str((root.parent if root.name == "configs" else root).resolve())
    if default is None:
        raise ConfigError("bundle_root: not run through a MONAI ConfigWorkflow; pass --bundle_root <bundle folder>")
    return str(Path(default).resolve())


def _datalist(dataset_dir: str | os.PathLike):
    if not dataset_dir:
        raise ConfigError("dataset_dir is not set: pass --dataset_dir <MSD-layout task folder>")
    return load_msd_datalist(dataset_dir)


def fold_items(
    dataset_dir: str | os.PathLike,
    fold: int = 0,
    part: str = "train",
    fraction: float = 1.0,
    fraction_seed: int = 0,
    limit: int | None = None,
) -> list[dict]:
    """``[{"image", "label"}]`` of one side of a fold (``part`` = ``train`` or ``val``) of an MSD task folder.

    Folds come from the task's ``splits.json`` when present, else a seeded 5-fold split (as ``volmae-train``).
    ``fraction`` keeps a seeded subset of the training cases (label-efficiency runs); ``limit`` the first N.
    """
    if part not in ("train", "val"):
        raise ConfigError(f"part={part!r}: expected 'train' or 'val'")
    train, val = split_fold(_datalist(dataset_dir), int(fold))
    items = label_fraction(train, fraction, fraction_seed) if part == "train" else val
    items = items[:limit] if limit else items
    return [{"image": it["image"], "label": it["label"]} for it in items]


def unlabeled_items(dataset_dir: str | os.PathLike, fold: int | None = 0, limit: int | None = None) -> list[dict]:
    """Images for MAE pretraining: every image of the task (labels ignored) except the fold's validation cases, plus
    the unlabeled ``test`` images; ``fold=None`` uses all training images."""
    fold = None if fold is None else int(fold)
    out = [{"image": it["image"]} for it in pretraining_items(_datalist(dataset_dir), fold)]
    return out[:limit] if limit else out


def input_items(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict]:
    """``[{"image": ...}]`` for bundle inference: NIfTI files, DICOM series folders, or folders of either (the same
    rules as ``volmae-infer``)."""
    from volmae.inference.infer import collect_inputs

    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return [{"image": path} for _, path in collect_inputs(paths)]


def with_pretrained(network: torch.nn.Module, pretrained: str | os.PathLike | None) -> torch.nn.Module:
    """Load a pretrained encoder (volmae MAE / UNETR checkpoint, MONAI ViT / UNETR weights; from a masked-unetr
    pretraining run the UNETR decoder too) into ``network`` when ``pretrained`` is set; the load report is logged
    and kept as ``network.load_report``."""
    if not pretrained:
        return network
    from volmae.networks.weights import load_pretrained

    network.load_report = load_pretrained(network, pretrained)
    logger.info(network.load_report.summary())
    return network


def optimizer(
    network: torch.nn.Module, lr: float, weight_decay: float = 1e-4, layer_decay: float = 1.0
) -> torch.optim.AdamW:
    """AdamW with no weight decay on norms / biases / embeddings and, for ``layer_decay < 1``, encoder block ``i``
    at ``lr * layer_decay ** (depth + 1 - i)`` (the group's initial lr, so MONAI's lr schedulers keep the ratio)."""
    if lr <= 0:
        raise ConfigError(f"lr={lr}: must be > 0")
    groups = param_groups(getattr(network, "module", network), weight_decay, layer_decay)  # DDP-wrapped or not
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return adamw(groups, lr=lr, weight_decay=weight_decay)


def model_file(root: str | os.PathLike, name: str = "model.pt") -> str:
    """``<root>/models/<name>``, or a :class:`ConfigError` saying how to get one when it does not exist."""
    path = Path(root) / "models" / name
    if not path.is_file():
        raise ConfigError(
            f"{path}: no trained weights in the bundle; train it first (python -m monai.bundle run training "
            f"--config_file {Path(root) / 'configs' / 'train.json'} --dataset_dir ...) or copy a state dict there"
        )
    return str(path)


def device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; otherwise ``torch.device(name)``."""
    from volmae.utils.runtime import resolve_device

    return resolve_device(name or "auto")


def end_distributed() -> None:
    """The multi-GPU configs' ``finalize``: wait for every rank, then end the process group.

    Why not just ``dist.destroy_process_group()`` (MONAI zoo bundles' finalize): rank 0 alone runs the checkpoint and
    validation handlers, so the other ranks reach ``finalize`` first and tore their gloo/NCCL pairs down while rank 0
    was still writing; a torchrun test of the btcv bundle once died there with SIGABRT ("terminate called without an
    active exception") in the early rank. volmae's own engines end with this barrier too (``Dist.barrier`` before
    ``shutdown_distributed``).
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
