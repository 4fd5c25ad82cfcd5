"""Settings shared by the training stages, and the set-up every stage starts with.

``StageConfig`` holds what pretraining and fine-tuning have in common; each stage's dataclass adds its own fields
and may change a default by redeclaring the field. Console-script flags are generated from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from volmae.data.datalist import Datalist, load_msd_datalist
from volmae.data.transforms import Preprocessing, get_preprocessing
from volmae.errors import ConfigError
from volmae.utils.io import atomic_write_text, config_yaml
from volmae.utils.runtime import resolve_device

__all__ = ["StageConfig", "StageSetup", "prepare_stage"]


@dataclass
class StageConfig:
    dataset_dir: str
    out_dir: str = "runs/stage"
    preset: str = "vit-tiny"
    preprocessing: str = "hippocampus"
    roi_size: tuple[int, int, int] | None = None
    patch_size: int | None = None
    epochs: int = 100
    batch_size: int = 2
    num_samples: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    cache: str = "memory"
    cache_dir: str | None = None
    checkpoint_every_steps: int = 0
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


class StageSetup(NamedTuple):
    device: torch.device
    prep: Preprocessing
    datalist: Datalist
    out: Path


def prepare_stage(cfg: StageConfig) -> StageSetup:
    """Check the shared settings, resolve device and preprocessing, read the datalist, create ``out_dir`` (refusing
    to start over a previous run's checkpoint unless ``resume`` or ``overwrite``) and record the settings in
    ``config.yaml``."""
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.lr <= 0:
        raise ConfigError(f"lr={cfg.lr}: must be > 0")
    device = resolve_device(cfg.device)
    prep = get_preprocessing(cfg.preprocessing, roi_size=cfg.roi_size, num_samples=cfg.num_samples)
    datalist = load_msd_datalist(cfg.dataset_dir)
    out = Path(cfg.out_dir)
    if (out / "checkpoint.pt").exists() and not (cfg.resume or cfg.overwrite):
        raise ConfigError(
            f"{out} already holds a run (checkpoint.pt); pass --resume to continue it, --overwrite to start over, "
            "or another --out-dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config_yaml(cfg))
    return StageSetup(device, prep, datalist, out)
