"""Supervised fine-tuning of a UNETR, nnFormer or residual-encoder U-Net (from scratch, from pretrained weights, or
continuing a trained model), or training of the DynUNet CNN peer, with sliding-window validation; the preset picks
the network.

From pretrained weights (``pretrained``): ``transfer`` says what loads (the encoder, or encoder and decoder with a
fresh head: :func:`volmae.artifact.load_pretrained`), and the family's recipe
(:data:`volmae.networks.registry.RECIPES`) sets the peak learning rate (``pretrained_lr_scale`` x ``lr``) and the
layer-wise decay; the linear warm-up is ``warmup_epochs``,
optionally after ``decoder_first_epochs`` in which the encoder holds still (:func:`volmae.engine.loop.lr_factor`).
``volmae-train`` and the bundles' ``train`` workflow both run :func:`finetune`.

Outputs (softmax over the labels, or with ``regions`` one sigmoid output per nested region of the dataset, BraTS
tumour core / whole tumour / enhancing): ``finetune(FinetuneConfig(...))`` writes to ``out_dir``
``checkpoint.pt`` (resumable), ``model.pt`` (the model file to use: the last epoch's weights, or with
``select_best`` the best validated epoch's), ``model_best.pt``, ``history.json``, TensorBoard scalars,
``config.yaml`` and, when pretrained weights were given, ``pretrained_load_report.txt``.

Validation and model selection never see the held-out fold: validation cases are drawn (seeded) from the training
cases, ``val_fraction`` of them, and leave training. ``val_on_held_out`` instead scores the held-out fold for a
descriptive learning curve (the study's convergence plots) and then refuses ``select_best``.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.losses import DeepSupervisionLoss

from volmae.artifact.model import Provenance, Task, read_weights
from volmae.artifact.pretrained import TRANSFERS, load_pretrained
from volmae.data import (
    Datalist,
    case_id,
    eval_transforms,
    label_fraction,
    make_dataset,
    preflight,
    split_fold,
    split_validation,
    train_transforms,
)
from volmae.engine.loop import TrainLoop
from volmae.engine.losses import annotated_mask, segmentation_loss, training_annotations
from volmae.engine.stage import StageConfig, encoder_overrides, loop_config, prepare_stage
from volmae.errors import ConfigError
from volmae.evaluation.metrics import dice_scores, label_masks, scored_classes
from volmae.inference.predictor import Predictor
from volmae.networks.registry import RECIPES, build_segmenter, citations
from volmae.networks.weights import load_state_exactly
from volmae.utils.io import atomic_write, atomic_write_text
from volmae.utils.onednn import use_onednn_linears
from volmae.utils.optim import param_groups
from volmae.utils.runtime import as_layout, channels_last

__all__ = ["FinetuneConfig", "FinetuneResult", "Cases", "fold_cases", "finetune"]


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
    transfer: str = "auto"  # what --pretrained loads: encoder, whole (encoder + decoder), auto (whole when it can)
    pretrained_lr_scale: float | None = None  # peak LR x this from pretrained weights (None: the family's recipe)
    decoder_first_epochs: float = 0.0  # from pretrained weights: decoder-only warm-up epochs before the whole network
    init_from: str | None = None
    regions: bool = False
    fold: int = 0
    label_fraction: float = 1.0
    fraction_seed: int = 0
    layer_decay: float | None = None  # from pretrained weights (None: the family's recipe, RECIPES)
    min_lr_ratio: float = 0.01
    val_every: int = 5
    val_fraction: float = 0.1
    val_on_held_out: bool = False
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


@dataclass
class Cases:
    """The cases one fine-tuning run trains and validates on, and what their labels mean (``datalist``: labels,
    channel names, regions, partial annotations). :func:`finetune` reads them from ``dataset_dir`` by default; a
    bundle passes its own lists (which MONAI Label replaces)."""

    datalist: Datalist
    train: list[dict]
    validation: list[dict]


def fold_cases(
    datalist: Datalist,
    fold: int = 0,
    fraction: float = 1.0,
    fraction_seed: int = 0,
    val_fraction: float = 0.1,
    validate: bool = True,
    on_held_out: bool = False,
) -> tuple[list[dict], list[dict]]:
    """``(training, validation)`` cases of a run: the training side of ``fold``, its seeded label ``fraction``, and
    from those the validation cases (``val_fraction``) when the run validates; with ``on_held_out`` the fold's
    held-out cases instead (descriptive only). The bundles' data lists are these same cases."""
    train, held_out = split_fold(datalist, fold)
    train = label_fraction(train, fraction, fraction_seed)
    if not validate:
        return train, []
    if on_held_out:
        return train, held_out
    return split_validation(train, val_fraction, fraction_seed)


def _check(cfg: FinetuneConfig) -> None:
    if cfg.val_every < 0:
        raise ConfigError(f"val_every={cfg.val_every}: must be >= 0 (0 disables validation)")
    if cfg.pretrained and cfg.init_from:
        raise ConfigError("pretrained and init_from: give one (pretrained weights to start from, or a whole model)")
    if cfg.transfer not in TRANSFERS:
        raise ConfigError(f"transfer={cfg.transfer!r}: expected one of {', '.join(TRANSFERS)}")
    if cfg.pretrained_lr_scale is not None and not 0 < cfg.pretrained_lr_scale <= 1:
        raise ConfigError(f"pretrained_lr_scale={cfg.pretrained_lr_scale}: must be in (0, 1] (1 keeps --lr)")
    if cfg.decoder_first_epochs < 0 or (cfg.decoder_first_epochs and not cfg.pretrained):
        raise ConfigError(
            f"decoder_first_epochs={cfg.decoder_first_epochs}: must be >= 0, and needs pretrained weights "
            "(a decoder-first warm-up keeps a pretrained encoder still while a fresh decoder catches up)"
        )
    if cfg.select_best and cfg.val_on_held_out:
        raise ConfigError(
            "select_best with val_on_held_out would pick the model on the held-out fold; validate on cases drawn "
            "from the training cases (val_fraction) to select"
        )
    if cfg.select_best and not (cfg.val_every and cfg.val_fraction):
        raise ConfigError("select_best needs validation: val_every > 0 and val_fraction > 0")


def _with_case(items: list[dict]) -> list[dict]:
    """Items as the engine keeps them: with a ``case`` id (a bundle's lists, e.g. from MONAI Label, may lack it)."""
    return [{**it, "case": it.get("case") or case_id(it["image"])} for it in items]


def _init_whole(model: torch.nn.Module, path: str) -> None:
    """Every weight of ``path`` (a segmentation model file of this network, or a bundle's plain state dict)."""
    state, _ = read_weights(path)
    load_state_exactly(
        model, state, f"{path}: does not fit this network ({{why}}); init_from takes a model of the same preset, "
        "ROI and classes (use pretrained for an encoder)"
    )  # fmt: skip


def finetune(cfg: FinetuneConfig, cases: Cases | None = None) -> FinetuneResult:
    """Fine-tune (or resume fine-tuning) a UNETR or nnFormer, or train the DynUNet peer, on one fold of an MSD-layout
    dataset (or on ``cases``)."""
    _check(cfg)
    setup = prepare_stage(cfg, cases.datalist if cases else None)
    device, prep, datalist, out, dist, _ = setup  # the lr after lr_scaling goes to the loop in loop_config
    if datalist.num_classes < 2:
        what = "is an image-only list" if not datalist.items and not cases else "declares no foreground labels"
        raise ConfigError(f"{cfg.dataset_dir or 'the data'}: {what}; fine-tuning needs labeled cases")
    if cases is None:
        train_items, val_items = fold_cases(
            datalist, cfg.fold, cfg.label_fraction, cfg.fraction_seed, cfg.val_fraction, cfg.val_every > 0,
            cfg.val_on_held_out,
        )  # fmt: skip
    else:
        train_items, val_items = _with_case(cases.train), _with_case(cases.validation) if cfg.val_every else []
    if not train_items:
        raise ConfigError("no training cases: set dataset_dir (an MSD task folder) or give the training list")
    if cfg.val_cases is not None:
        val_items = val_items[: cfg.val_cases]
    if cfg.regions and not datalist.regions:
        raise ConfigError(f"regions: {datalist.name or 'the dataset'} declares no label regions (dataset.json)")
    regions = datalist.regions if cfg.regions else None
    if regions and datalist.annotated:
        raise ConfigError("regions: sigmoid region training takes fully annotated cases (no labels_present)")
    task = Task(
        prep,
        datalist.in_channels,
        datalist.labels,
        tuple(datalist.modality[i] for i in sorted(datalist.modality)),
        regions,
        datalist.name,
    )
    if datalist.annotated:  # a partially annotated task: each crop carries the classes its case masks (marginal loss)
        masks = training_annotations(datalist.annotated, [it["case"] for it in train_items], datalist.num_classes)
        train_items = [{**it, "annotated": masks[it["case"]]} for it in train_items]
    preflight(train_items, datalist.in_channels, True, "training datalist", prep.pixdim)
    if val_items:
        preflight(val_items, datalist.in_channels, True, "validation datalist", prep.pixdim)

    torch.manual_seed(cfg.seed)
    model, network = build_segmenter(
        cfg.preset,
        datalist.in_channels,
        task.out_channels,
        prep.roi_size,
        cfg.patch_size,
        cfg.feature_size,
        cfg.skip_norm,
        cfg.deep_supervision,
        spacing=prep.pixdim or 1.0,  # the CNN peer plans its strides from it
        **encoder_overrides(cfg),
    )
    if cfg.decoder_first_epochs and getattr(model, "encoder", None) is None:
        raise ConfigError(f"decoder_first_epochs: a {network.kind} network has no separate encoder to hold still")
    initialised = "scratch"
    recipe = RECIPES[network.family]
    if cfg.pretrained:
        report = load_pretrained(model, network, cfg.pretrained, cfg.transfer, prep.pixdim)
        part = "encoder and decoder" if report.decoder_loaded else "encoder"
        initialised = f"the pretrained {part} of {cfg.pretrained}"
        lr_scale = recipe.lr_scale if cfg.pretrained_lr_scale is None else cfg.pretrained_lr_scale
        setup = setup._replace(lr=setup.lr * lr_scale)
        if dist.is_main:
            atomic_write_text(out / "pretrained_load_report.txt", report.summary() + "\n")
            if not cfg.quiet:
                print(report.summary())
    elif cfg.init_from:
        _init_whole(model, cfg.init_from)
        initialised = f"every weight of {cfg.init_from}"
    model = model.to(device)
    layout = channels_last(model, device, cfg.channels_last)  # faster 3D convolutions on the CPU
    use_onednn_linears(model, device, cfg.onednn_linear)
    layer_decay = (recipe.layer_decay if cfg.layer_decay is None else cfg.layer_decay) if cfg.pretrained else 1.0
    provenance = Provenance.now(
        "finetune",
        dataset=datalist.name,
        dataset_dir=str(cfg.dataset_dir or ""),
        fold=cfg.fold if cases is None else None,
        training_cases=tuple(it["case"] for it in train_items),
        validation_cases=tuple(it["case"] for it in val_items),
        seed=cfg.seed,
        initialised_from=initialised,
        selection="the last epoch's weights",
        citation=citations(network, cfg.pretrained),
        settings=asdict(cfg),
    )
    loop = TrainLoop(
        model,
        param_groups(model, cfg.weight_decay, layer_decay, split_encoder=cfg.decoder_first_epochs > 0),
        loop_config(
            cfg, setup, "finetune", min_lr_ratio=cfg.min_lr_ratio, decoder_first_epochs=cfg.decoder_first_epochs
        ),
        network,
        task,
        provenance,
        run_config=asdict(cfg),
        dist=dist,
    )
    num_classes = datalist.num_classes
    key = f"{asdict(prep)} {datalist.in_channels} {num_classes} {regions}"  # the disk cache's preprocessing key
    train_tf = train_transforms(prep, num_classes, regions=regions)
    train_ds = make_dataset(train_items, train_tf, cfg.cache, cfg.cache_dir, cfg.num_workers, f"train {key}")
    val_tf = eval_transforms(prep, num_classes)  # label maps: scored like volmae-evaluate, regions included
    val_ds = (
        make_dataset(val_items, val_tf, cfg.cache, cfg.cache_dir, cfg.num_workers, f"eval {key}") if val_items else None
    )
    # Dice + CE over softmax labels, marginalised over the classes a case does not annotate, or Dice + BCE over
    # sigmoid regions (volmae.engine.losses); a deep-supervision network returns [full, /2, ...] in training, which
    # DeepSupervisionLoss weighs 1, 1/2, ...
    base_loss = segmentation_loss(task)
    predictor = Predictor(
        model, prep, device, cfg.sw_batch_size, cfg.overlap, amp=cfg.amp, cpu_bf16=cfg.cpu_bf16, regions=regions
    )
    classes, names = scored_classes(datalist.labels, regions)

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
            scored = np.ones(len(classes), bool)
            if not regions:
                scored = annotated_mask(datalist.annotated.get(val_items[i]["case"]), num_classes)[classes].numpy()
            dice = dice_scores(label_masks(pred, classes), label_masks(item["label"].cpu(), classes))
            sums += np.where(scored, dice, 0.0)
            counts += scored
        totals = np.asarray(dist.sum([*sums, *counts], device))
        per_class = {n: float(t / k) for n, t, k in zip(names, totals[: len(classes)], totals[len(classes) :]) if k > 0}
        mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
        return {"val_dice": mean, **{f"val_dice_{n}": v for n, v in per_class.items()}}

    state = loop.fit(train_ds, step, validate, monitor="val_dice", resume=cfg.resume)
    best = out / "model_best.pt"
    model_path = out / "model.pt"
    if cfg.select_best and best.is_file():
        if dist.is_main:
            atomic_write(model_path, lambda tmp: shutil.copyfile(best, tmp))
    else:
        loop.save_weights("model.pt", "the last epoch's weights")
    dist.barrier()  # model.pt is on disk for every rank
    return FinetuneResult(out, model_path, state.history, state.best_metric, state.best_epoch, len(train_items))
