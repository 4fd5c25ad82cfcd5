"""What a label-efficiency study runs: its settings (:class:`StudyConfig`) and its runs (:func:`plan_study`).

The design, fixed before any run:

* **pretraining** once per encoder preset on the training side of ``fold`` plus the dataset's unlabeled images
  (labels unused; the held-out fold's images stay unseen), optionally plus the images of other datasets
  (``pretrain_sources``, the cross-dataset check), or reused from an earlier run
  (``reuse_pretraining`` ``PRESET=PATH``);
* **fine-tuning** of every encoder preset from scratch and from its pretraining, and of the CNN peer (``peer``,
  MONAI ``DynUNet``) from scratch, at each label ``fraction`` x ``seed``. The seed picks the labeled subset
  (``label_fraction(train, fraction, seed)``) and the training seed, so a pretrained run and its scratch twin see
  the same labels, crops and order: the pairs of the paired test;
* the **budget** is exactly ``steps`` optimizer steps for every run, whatever the fraction (``ceil(steps /
  steps_per_epoch)`` epochs, the last cut short; :class:`volmae.engine.loop.LoopConfig` ``max_steps``): a 5 % run
  trains as long as a 100 % run, so the curves compare labels, not compute. Warm-up is 5 % of the steps. The CNN
  peer may get its own budget (``peer_steps``): the steps that take it as long as ``steps`` take the encoders, to
  compare at equal compute (a CNN step costs several transformer steps on a CPU) rather than at equal steps;
* **convergence**: runs at ``curve_fractions`` validate every ``epochs / curve_points`` epochs on the first
  ``curve_cases`` held-out cases (Dice vs step, descriptive only: the model kept is always the last epoch's, never
  selected on those cases);
* **evaluation** of every final model on the whole held-out fold, in each case's original space
  (:func:`volmae.evaluation.evaluate.evaluate`);
* **nnU-Net v2** as a peer (``peer="nnunet"``, :mod:`volmae.study.nnunet`): at each fraction x seed, the same
  labeled cases trained by nnU-Net's own pipeline for each of ``nnunet_budgets``: ``"1x"`` the mean training minutes
  of the volmae runs of that fraction and seed in the study folder (equal CPU minutes; the nnU-Net run waits for
  them), ``"4x"`` four times that, or a number of minutes; its predictions scored by the same evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from volmae.data.datalist import label_fraction, load_datalist, split_fold
from volmae.data.loading import steps_per_epoch
from volmae.data.transforms import get_preprocessing
from volmae.errors import ConfigError
from volmae.networks.registry import METHODS, fit_roi, get_preset

__all__ = [
    "StudyConfig",
    "PretrainRun",
    "FinetuneRun",
    "NnunetRun",
    "plan_study",
    "pretrained_overrides",
    "encoder_methods",
    "budget_value",
]

INITS = ("scratch", "pretrained")


@dataclass
class StudyConfig:
    """Settings of a label-efficiency study (``volmae-study`` flags map onto these names)."""

    dataset_dir: str
    out_dir: str = "runs/study"
    encoders: list[str] = field(default_factory=lambda: ["vit-tiny", "nnformer-tiny"])
    methods: list[str] | None = None  # per encoder; default: masked-unetr for a ViT, masked-volume for nnFormer
    peer: str = "dynunet"  # the CNN peer's preset, "nnunet" (nnU-Net v2 itself), or "none"
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    fold: int = 0
    preprocessing: str = "hippocampus"
    roi_size: tuple[int, int, int] | None = None  # each preset rounds it up to what it tiles (registry.fit_roi)
    pixdim: tuple[float, float, float] | None = None  # target spacing in mm (None: the preprocessing preset's)
    steps: int = 400  # fine-tuning budget per run, in optimizer steps
    peer_steps: int | None = None  # the CNN peer's budget (None: steps), e.g. to match the encoders' minutes
    lr: float = 5e-4
    batch_size: int = 2
    num_samples: int = 2
    layer_decay: float = 1.0  # for pretrained runs (docs/hippocampus_study.md: 1.0 beat 0.75 on validation cases)
    pretrain_epochs: int = 30
    pretrain_lr: float = 5e-4
    pretrain_batch_size: int = 4
    reuse_pretraining: list[str] | None = None  # PRESET=PATH: reuse that pretraining instead of running one
    pretrain_sources: list[str] | None = None  # more image folders / lists / MSD tasks to pretrain on
    pretrain_on_dataset: bool = True  # False: pretrain on pretrain_sources only (e.g. 1-channel MRI for BraTS)
    curve_fractions: list[float] = field(default_factory=lambda: [0.1])
    curve_points: int = 8  # 0: no curves (each validation scores curve_cases whole volumes)
    curve_cases: int = 10
    device: str = "auto"
    cpu_bf16: bool = False  # bf16 autocast of every stage's network on the CPU (pretraining, fine-tuning, evaluation)
    quiet: bool = True
    report_only: bool = False
    pretrain_only: bool = False  # run the pretrainings only (one process, every thread), the fine-tunes later
    pool_studies: list[str] | None = None  # report: pool these study folders' runs (same design, other folds)
    nnunet_budgets: list[str] = field(
        default_factory=lambda: ["1x", "4x"]
    )  # peer nnunet: Nx the volmae minutes, or minutes
    nnunet_python: str | None = None  # peer nnunet: the interpreter with nnunetv2 (default $VOLMAE_NNUNET_PYTHON)
    nnunet_mirroring: bool = True  # peer nnunet: its default mirroring test-time augmentation when predicting

    def __post_init__(self) -> None:
        if self.encoders == ["none"]:  # the CLI's way to write encoders=[]: the CNN peer only (like peer="none")
            self.encoders = []


@dataclass(frozen=True)
class PretrainRun:
    preset: str
    method: str
    roi_size: tuple[int, int, int]
    out_dir: Path

    @property
    def name(self) -> str:
        return f"pretrain/{self.preset}"

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.pt"


@dataclass(frozen=True)
class FinetuneRun:
    preset: str
    init: str  # "scratch" or "pretrained"
    fraction: float
    seed: int
    labeled_cases: int
    epochs: int  # ceil(steps / steps per epoch): the last one is cut short at ``steps``
    steps: int
    warmup_epochs: float  # 5 % of ``steps``, in this run's epochs (the loop's unit)
    val_every: int  # 0: no convergence curve
    roi_size: tuple[int, int, int]
    out_dir: Path
    pretrained: Path | None  # the weights a pretrained run starts from
    pretrain: PretrainRun | None  # the study's pretraining it waits for (None: reused weights or scratch)

    @property
    def name(self) -> str:
        return f"finetune/{self.out_dir.name}"


@dataclass(frozen=True)
class NnunetRun:
    """nnU-Net v2 trained on a fraction x seed's labeled cases for ``budget`` (``"<N>x"`` the volmae runs' mean
    minutes there, or minutes)."""

    fraction: float
    seed: int
    budget: str
    labeled_cases: int
    out_dir: Path

    @property
    def preset(self) -> str:
        return nnunet_preset(self.budget)

    @property
    def name(self) -> str:
        return f"peer/{self.out_dir.name}"

    @property
    def factor(self) -> float | None:
        """N of an ``"<N>x"`` budget; None for minutes."""
        return float(self.budget[:-1]) if self.budget.endswith("x") else None


def nnunet_preset(budget: str) -> str:
    """How tables name the nnU-Net peer at a budget: ``nnunet-1x``, ``nnunet-20min``."""
    return f"nnunet-{budget}" if budget.endswith("x") else f"nnunet-{budget}min"


def budget_value(budget: str) -> float:
    """The number in an nnU-Net budget (``"1x"``, ``"4x"``, ``"20"`` minutes); a ConfigError naming the forms."""
    try:
        value = float(budget[:-1] if budget.endswith("x") else budget)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(
            f"nnunet_budgets: {budget!r}; expected e.g. 1x, 4x (times the volmae runs' minutes) or 20 (minutes)"
        )
    return value


def encoder_methods(encoders: list[str], methods: list[str] | None) -> dict[str, str]:
    """{encoder: its pretraining method}: ``methods`` one per encoder, or None for each family's default."""
    out = {}
    for preset, given in zip(encoders, methods or [None] * len(encoders)):
        family = get_preset(preset).family
        out[preset] = given or ("masked-unetr" if family == "vit" else "auto")  # auto: masked volume / S3D / Primus
        if out[preset] not in METHODS[family]:
            raise ConfigError(f"methods: {out[preset]!r} does not apply to {preset!r}; choose one of {METHODS[family]}")
    return out


def pretrained_overrides(entries: list[str] | None, encoders: list[str]) -> dict[str, Path]:
    """``["PRESET=PATH", ...]`` -> {preset: path}, each preset one of the study's encoders and each file present."""
    out: dict[str, Path] = {}
    for entry in entries or []:
        preset, sep, path = entry.partition("=")
        if not sep or not path:
            raise ConfigError(f"reuse_pretraining={entry!r}: expected PRESET=PATH, e.g. vit-tiny=runs/mae/model.pt")
        if preset not in encoders:
            raise ConfigError(f"reuse_pretraining={entry!r}: {preset!r} is not one of the study's encoders {encoders}")
        if not Path(path).is_file():
            raise ConfigError(f"reuse_pretraining={entry!r}: no file {path}")
        out[preset] = Path(path)
    return out


def _check(cfg: StudyConfig) -> None:
    if not cfg.encoders and cfg.peer == "none":
        raise ConfigError("encoders=[] and peer='none': nothing to study")
    if "none" in cfg.encoders:
        raise ConfigError(f"encoders={cfg.encoders}: 'none' stands alone (the CNN peer only)")
    if not cfg.fractions or any(not 0.0 < f <= 1.0 for f in cfg.fractions):
        raise ConfigError(f"fractions={cfg.fractions}: each must be in (0, 1]")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds={cfg.seeds}: need at least one, without repeats")
    if len(set(cfg.fractions)) != len(cfg.fractions):
        raise ConfigError(f"fractions={cfg.fractions}: repeated")
    for name in ("steps", "batch_size", "num_samples", "pretrain_epochs", "curve_cases"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.peer_steps is not None and (cfg.peer_steps < 1 or cfg.peer == "none"):
        raise ConfigError(f"peer_steps={cfg.peer_steps}: must be >= 1, and needs a peer (peer={cfg.peer!r})")
    if cfg.pretrain_only and cfg.report_only:
        raise ConfigError("pretrain_only and report_only: give one (report_only runs nothing)")
    if cfg.curve_points < 0:
        raise ConfigError(f"curve_points={cfg.curve_points}: must be >= 0 (0: no convergence curves)")
    if not cfg.pretrain_on_dataset and not cfg.pretrain_sources and cfg.encoders and not cfg.reuse_pretraining:
        raise ConfigError("pretrain_on_dataset=False needs pretrain_sources (the images to pretrain on)")
    if cfg.methods is not None and len(cfg.methods) != len(cfg.encoders):
        raise ConfigError(f"methods={cfg.methods}: give one per encoder ({cfg.encoders})")
    for preset in cfg.encoders:
        if get_preset(preset).family == "cnn":
            raise ConfigError(f"encoders: {preset!r} is a CNN; pass it as peer (it has no encoder to pretrain)")
    if cfg.peer not in ("none", "nnunet"):
        get_preset(cfg.peer, "cnn")
    if cfg.peer == "nnunet":
        if not cfg.nnunet_budgets:
            raise ConfigError("nnunet_budgets: give at least one (e.g. 1x: the volmae runs' minutes)")
        for b in cfg.nnunet_budgets:
            budget_value(b)
        if cfg.peer_steps is not None:
            raise ConfigError("peer_steps sizes the DynUNet peer; the nnU-Net peer's budget is nnunet_budgets")


def plan_study(cfg: StudyConfig) -> list[PretrainRun | FinetuneRun | NnunetRun]:
    """Every run of the study, pretraining first, each with its own folder under ``out_dir``."""
    _check(cfg)
    out = Path(cfg.out_dir)
    prep = get_preprocessing(cfg.preprocessing, roi_size=cfg.roi_size, pixdim=cfg.pixdim)
    train, _ = split_fold(load_datalist(cfg.dataset_dir), cfg.fold)
    reused = pretrained_overrides(cfg.reuse_pretraining, cfg.encoders)
    models = [(p, init) for p in cfg.encoders for init in INITS] + (
        [(cfg.peer, "scratch")] if cfg.peer not in ("none", "nnunet") else []
    )
    rois = {preset: fit_roi(preset, prep.roi_size) for preset, _ in models}
    pretrains: dict[str, PretrainRun] = {}
    for preset, method in encoder_methods(cfg.encoders, cfg.methods).items():
        if preset not in reused:
            pretrains[preset] = PretrainRun(preset, method, rois[preset], out / "pretrain" / preset)
    runs: list[PretrainRun | FinetuneRun | NnunetRun] = list(pretrains.values())
    peers: list[NnunetRun] = []
    for fraction in sorted(cfg.fractions):
        for seed in cfg.seeds:
            n = len(label_fraction(train, fraction, seed))
            per_epoch = steps_per_epoch(n, cfg.batch_size)
            curve = cfg.curve_points > 0 and any(math.isclose(fraction, f) for f in cfg.curve_fractions)
            for preset, init in models:
                steps = cfg.peer_steps if preset == cfg.peer and cfg.peer_steps else cfg.steps
                epochs, warmup_epochs = math.ceil(steps / per_epoch), 0.05 * steps / per_epoch
                val_every = max(1, epochs // cfg.curve_points) if curve else 0
                pre = pretrains.get(preset) if init == "pretrained" else None
                weights = (pre.model_path if pre else reused.get(preset)) if init == "pretrained" else None
                tag = f"{preset}_{init}_{fraction * 100:g}pct_s{seed}"
                runs.append(
                    FinetuneRun(
                        preset, init, fraction, seed, n, epochs, steps, warmup_epochs, val_every, rois[preset],
                        out / "runs" / tag, weights, pre,
                    )
                )  # fmt: skip
            if cfg.peer == "nnunet":
                for budget in cfg.nnunet_budgets:
                    tag = f"{nnunet_preset(budget)}_scratch_{fraction * 100:g}pct_s{seed}"
                    peers.append(NnunetRun(fraction, seed, budget, n, out / "runs" / tag))
    return runs + peers  # nnU-Net last: an equal-minutes budget waits for the volmae runs it matches
