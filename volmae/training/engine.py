"""Supervised fine-tuning of UNETR or nnFormer (from scratch or from pretrained weights), or training of the
DynUNet CNN peer from scratch, with sliding-window validation; the preset picks the network.

``finetune(FinetuneConfig(...))`` writes to ``out_dir``: ``checkpoint.pt`` (resumable), ``model_best.pt`` (best
validation Dice), ``model.pt`` (the model to use: the last epoch's, or with ``select_best`` the best validated
one; validation runs on the held-out fold, so selecting on it makes that fold's Dice optimistic),
``history.json``, TensorBoard scalars, ``config.yaml`` and, when pretrained weights were given,
``pretrained_load_report.txt`` (which keys loaded, which were resampled or skipped).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.losses import DeepSupervisionLoss

from volmae.config import StageConfig, loop_config, prepare_stage
from volmae.data import (
    eval_transforms,
    label_fraction,
    make_dataset,
    preflight,
    split_fold,
    train_transforms,
)
from volmae.errors import ConfigError
from volmae.evaluation.metrics import label_masks
from volmae.inference.predictor import Predictor
from volmae.networks.registry import build_segmenter
from volmae.training.losses import MarginalDiceCELoss, annotated_mask, training_annotations
from volmae.utils.io import atomic_write, atomic_write_text
from volmae.utils.loop import TrainLoop
from volmae.utils.onednn import use_onednn_linears
from volmae.utils.optim import param_groups
from volmae.utils.runtime import as_layout, channels_last

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "dice_per_class"]


@dataclass
class FinetuneConfig(StageConfig):
    """Settings of one fine-tuning run (CLI flags and bundle configs map onto these names)."""

    out_dir: str = "runs/finetune"
    weight_decay: float = 1e-4
    grad_clip: float | None = 1.0
    feature_size: int | None = None
    skip_norm: bool = True
    deep_supervision: bool | None = None
    pretrained: str | None = None
    fold: int = 0
    label_fraction: float = 1.0
    fraction_seed: int = 0
    layer_decay: float = 0.75
    min_lr_ratio: float = 0.01
    val_every: int = 5
    select_best: bool = False
    val_cases: int | None = None
    sw_batch_size: int = 4
    overlap: float = 0.5


@dataclass
class FinetuneResult:
    out_dir: Path
    model_path: Path
    history: list[dict]
    best_dice: float
    best_epoch: int
    num_train_cases: int


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, classes: list[int]) -> list[float]:
    """Dice of ``1 D H W`` label maps for each class (1.0 when a class is absent from both)."""
    p, t = label_masks(pred, classes), label_masks(label, classes)
    inter = (p & t).flatten(1).sum(1).double()
    size = p.flatten(1).sum(1).double() + t.flatten(1).sum(1).double()
    return torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size)).tolist()


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Fine-tune (or resume fine-tuning) a UNETR or nnFormer, or train the DynUNet peer, on one fold of an MSD-layout
    dataset."""
    if cfg.val_every < 0:
        raise ConfigError(f"val_every={cfg.val_every}: must be >= 0 (0 disables validation)")
    setup = prepare_stage(cfg)
    device, prep, datalist, out, dist, _ = setup  # the lr after lr_scaling goes to the loop in loop_config
    if datalist.num_classes < 2:
        what = "is an image-only list" if not datalist.items else "declares no foreground labels (dataset.json)"
        raise ConfigError(f"{cfg.dataset_dir}: {what}; fine-tuning needs labeled cases (an MSD task folder)")
    train_items, val_items = split_fold(datalist, cfg.fold)
    train_items = label_fraction(train_items, cfg.label_fraction, cfg.fraction_seed)
    if cfg.val_cases is not None:
        val_items = val_items[: cfg.val_cases]
    if datalist.annotated:  # a partially annotated task: each crop carries the classes its case masks (marginal loss)
        masks = training_annotations(datalist.annotated, [it["case"] for it in train_items], datalist.num_classes)
        train_items = [{**it, "annotated": masks[it["case"]]} for it in train_items]
    preflight(train_items, datalist.in_channels, True, "training datalist", prep.pixdim)
    if cfg.val_every:
        preflight(val_items, datalist.in_channels, True, "validation datalist", prep.pixdim)

    torch.manual_seed(cfg.seed)
    model = build_segmenter(
        cfg.preset,
        datalist.in_channels,
        datalist.num_classes,
        prep.roi_size,
        cfg.patch_size,
        cfg.pretrained,
        cfg.feature_size,
        cfg.skip_norm,
        cfg.deep_supervision,
        spacing=prep.pixdim or 1.0,  # the CNN peer plans its strides from it
    ).to(device)
    if model.load_report is not None and dist.is_main:
        atomic_write_text(out / "pretrained_load_report.txt", model.load_report.summary() + "\n")
        if not cfg.quiet:
            print(model.load_report.summary())
    layout = channels_last(model, device, cfg.channels_last)  # faster 3D convolutions on the CPU
    use_onednn_linears(model, device, cfg.onednn_linear)
    layer_decay = cfg.layer_decay if cfg.pretrained else 1.0
    task = {
        "preprocessing": asdict(prep),
        "labels": datalist.labels,
        "in_channels": datalist.in_channels,
        "multilabel": False,
        "dataset": datalist.name,
    }
    loop = TrainLoop(
        model,
        param_groups(model, cfg.weight_decay, layer_decay),
        loop_config(cfg, setup, "finetune", min_lr_ratio=cfg.min_lr_ratio),
        kind=model.volmae_config["kind"],
        model_config=model.volmae_config,
        run_config=asdict(cfg),
        task=task,
        dist=dist,
    )
    key = f"{asdict(prep)} {datalist.in_channels} {datalist.num_classes}"  # the disk cache's preprocessing key
    train_tf, val_tf = train_transforms(prep, datalist.num_classes), eval_transforms(prep, datalist.num_classes)
    train_ds = make_dataset(train_items, train_tf, cfg.cache, cfg.cache_dir, cfg.num_workers, f"train {key}")
    val_ds = (
        make_dataset(val_items, val_tf, cfg.cache, cfg.cache_dir, cfg.num_workers, f"eval {key}")
        if cfg.val_every
        else None
    )
    # Dice + CE, marginalised over the classes a case does not annotate (volmae.training.losses); a deep-supervision
    # network returns [full, /2, ...] in training, which DeepSupervisionLoss weighs 1, 1/2, ...
    base_loss = MarginalDiceCELoss()
    predictor = Predictor(model, prep, device, cfg.sw_batch_size, cfg.overlap, amp=cfg.amp, cpu_bf16=cfg.cpu_bf16)
    classes = sorted(k for k in datalist.labels if k > 0)
    names = [datalist.labels[k] for k in classes]

    def step(batch):
        x = as_layout(batch["image"].to(device, non_blocking=True).as_tensor(), layout)
        y = batch["label"].to(device, non_blocking=True).as_tensor()
        annotated = batch.get("annotated")
        loss_fn = DeepSupervisionLoss(base_loss if annotated is None else partial(base_loss, annotated=annotated))
        return loss_fn(loop.net(x), y), x.shape[0]

    def validate(epoch: int) -> dict[str, float] | None:
        last = epoch + 1 == loop.epochs
        if val_ds is None or ((epoch + 1) % cfg.val_every and not last):
            return None
        # per-class Dice sums and case counts (a class a case does not annotate is not scored there, as in
        # volmae-evaluate); ranks take every N-th case
        sums, counts = np.zeros(len(classes)), np.zeros(len(classes))
        for i in range(dist.rank, len(val_ds), dist.world_size):
            item = val_ds[i]
            pred = predictor.segment(item["image"][None])[0].cpu()
            scored = annotated_mask(datalist.annotated.get(val_items[i]["case"]), datalist.num_classes)[classes]
            sums += np.where(scored, dice_per_class(pred, item["label"].cpu(), classes), 0.0)
            counts += scored.numpy()
        totals = np.asarray(dist.sum([*sums, *counts], device))
        per_class = {n: float(t / k) for n, t, k in zip(names, totals[: len(classes)], totals[len(classes) :]) if k > 0}
        mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
        return {"val_dice": mean, **{f"val_dice_{n}": v for n, v in per_class.items()}}

    state = loop.fit(train_ds, step, validate, monitor="val_dice", resume=cfg.resume)
    best = out / "model_best.pt"
    model_path = out / "model.pt"
    if cfg.select_best and val_ds is not None and best.is_file():
        if dist.is_main:
            atomic_write(model_path, lambda tmp: shutil.copyfile(best, tmp))
    else:
        loop.save_weights("model.pt")
    dist.barrier()  # model.pt is on disk for every rank
    return FinetuneResult(out, model_path, state.history, state.best_metric, state.best_epoch, len(train_items))
