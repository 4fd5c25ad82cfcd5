"""Settings shared by the training stages, and the set-up every stage starts with.

``StageConfig`` holds what pretraining and fine-tuning have in common; each stage's dataclass adds its own fields
and may change a default by redeclaring the field. Console-script flags are generated from these fields, and the
bundles' configs build them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch

from volmae.data.datalist import Datalist, load_datalist
from volmae.data.transforms import Preprocessing, get_preprocessing
from volmae.engine.loop import LoopConfig
from volmae.errors import ConfigError
from volmae.utils.distributed import Dist, init_distributed
from volmae.utils.flags import parse_flag
from volmae.utils.io import atomic_write_text, config_yaml
from volmae.utils.runtime import check_cpu_bf16, resolve_device

__all__ = ["StageConfig", "StageSetup", "prepare_stage", "loop_config", "encoder_overrides"]


@dataclass
class StageConfig:
    dataset_dir: str
    out_dir: str = "runs/stage"
    preset: str = "vit-tiny"
    preprocessing: str = "hippocampus"
    roi_size: tuple[int, int, int] | None = None
    pixdim: tuple[float, float, float] | None = None  # target voxel spacing in mm (None: the preset's)
    patch_size: int | None = None
    tokenizer: str | None = None  # Primus presets: "patch" (one strided conv) or "conv" (None: the preset's)
    epochs: int = 100
    steps: int | None = None  # an exact optimizer-step budget; when set it replaces epochs (engine.loop)
    batch_size: int = 2
    num_samples: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    beta2: float | None = None  # AdamW's second-moment decay (None: the stage's, 0.95 pretraining, 0.999 fine-tuning)
    warmup_epochs: float = 2.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_bf16: bool = False  # CPU bf16 autocast (opt-in; pays with AMX or AMD Zen 4+): runtime.cpu_has_bf16_units
    channels_last: bool = True  # CPU training of convolutional networks: see volmae.utils.runtime.channels_last
    onednn_linear: bool | None = None  # CPU training: linears' forward products on oneDNN (None: on AMD CPUs only)
    num_workers: int = 0
    cache: str = "memory"
    cache_dir: str | None = None
    checkpoint_every_steps: int = 0
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    lr_scaling: str = "none"
    dist_timeout: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):  # annotations are strings here (postponed evaluation)
            if f.type in ("bool", "bool | None"):
                setattr(self, f.name, parse_flag(f.name, getattr(self, f.name), optional=f.type != "bool"))


class StageSetup(NamedTuple):
    device: torch.device
    prep: Preprocessing
    datalist: Datalist
    out: Path
    dist: Dist
    lr: float  # the learning rate after ``lr_scaling`` for the number of ranks


LR_SCALING = {"none": lambda w: 1.0, "linear": lambda w: float(w), "sqrt": lambda w: w**0.5}


def prepare_stage(cfg: StageConfig, datalist: Datalist | None = None) -> StageSetup:
    """Check the shared settings, join a ``torchrun`` job when started by one (:mod:`volmae.utils.distributed`),
    resolve device and preprocessing, read the datalist (unless given: a bundle's own case lists), create
    ``out_dir`` (refusing to start over a previous run's checkpoint unless ``resume`` or ``overwrite``) and record
    the settings in ``config.yaml`` (rank 0)."""
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(f"steps={cfg.steps}: must be >= 1 (or unset: train whole epochs)")
    if cfg.lr <= 0:
        raise ConfigError(f"lr={cfg.lr}: must be > 0")
    if cfg.beta2 is not None and not 0 < cfg.beta2 < 1:
        raise ConfigError(f"beta2={cfg.beta2}: must lie strictly between 0 and 1, e.g. 0.98 (Primus) or 0.999")
    if cfg.lr_scaling not in LR_SCALING:
        raise ConfigError(f"lr_scaling={cfg.lr_scaling!r}: expected one of {', '.join(LR_SCALING)}")
    dist, device = init_distributed(resolve_device(cfg.device), cfg.dist_timeout)
    check_cpu_bf16(device, cfg.cpu_bf16)
    prep = get_preprocessing(cfg.preprocessing, roi_size=cfg.roi_size, pixdim=cfg.pixdim, num_samples=cfg.num_samples)
    datalist = datalist if datalist is not None else load_datalist(cfg.dataset_dir)
    out = Path(cfg.out_dir)
    if (out / "checkpoint.pt").exists() and not (cfg.resume or cfg.overwrite):
        raise ConfigError(
            f"{out} already holds a run (checkpoint.pt); pass --resume to continue it, --overwrite to start over, "
            "or another --out-dir"
        )
    dist.barrier()  # every rank has looked for a previous run before rank 0 writes anything
    lr = cfg.lr * LR_SCALING[cfg.lr_scaling](dist.world_size)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", config_yaml(cfg))
        crops = cfg.batch_size * prep.num_samples
        if not cfg.quiet or dist.enabled:
            print(
                f"{dist.world_size} process(es) on {device.type} x {cfg.batch_size} volumes x {prep.num_samples} crops"
                f" = {dist.world_size * crops} crops per optimizer step; lr {lr:.3g} (--lr {cfg.lr:.3g}, "
                f"lr_scaling {cfg.lr_scaling})",
                flush=True,
            )
    dist.barrier()
    return StageSetup(device, prep, datalist, out, dist, lr)


def encoder_overrides(cfg: StageConfig) -> dict[str, str]:
    """The encoder options a stage passes to the network builders when set (the Primus tokenizer)."""
    return {"tokenizer": cfg.tokenizer} if cfg.tokenizer is not None else {}


def loop_config(cfg: StageConfig, setup: StageSetup, desc: str, **stage_own) -> LoopConfig:
    """The training loop's settings that every stage takes from its :class:`StageConfig` the same way (budget,
    schedule, precision, device, seed, checkpoints, batch); ``stage_own``: the :class:`LoopConfig` fields a stage
    sets its own way (e.g. the MAE's AdamW ``betas``, fine-tuning's ``min_lr_ratio``); ``beta2`` replaces the second
    of the stage's ``betas`` when set."""
    if cfg.beta2 is not None:
        stage_own["betas"] = (stage_own.get("betas", LoopConfig.betas)[0], cfg.beta2)
    return LoopConfig(
        setup.out,
        cfg.epochs,
        setup.lr,
        cfg.warmup_epochs,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        amp=cfg.amp,
        cpu_bf16=cfg.cpu_bf16,
        device=setup.device,
        seed=cfg.seed,
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        quiet=cfg.quiet,
        desc=desc,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        max_steps=cfg.steps,
        **stage_own,
    )
