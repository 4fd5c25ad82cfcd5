"""Masked self-pretraining on the images of a task (labels unused): MAE for a ViT (SelfMedMAE's recipe), masked
volume for nnFormer or a whole UNETR, S3D sparse masking for a residual-encoder U-Net.

``pretrain(PretrainConfig(...))`` writes to ``out_dir``: ``checkpoint.pt`` (resumable state), ``model.pt``
(the pretrained model: pass it to fine-tuning as ``pretrained``), ``history.json``, TensorBoard scalars,
``config.yaml`` and ``pictures/reconstruction_*.png`` (original / masked input / reconstruction, mid slices).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from volmae.artifact.model import Provenance, Task, read_weights
from volmae.data import (
    make_dataset,
    preflight,
    pretrain_transforms,
    pretraining_items,
)
from volmae.data.transforms import infer_transforms
from volmae.engine.loop import TrainLoop
from volmae.engine.stage import StageConfig, encoder_overrides, loop_config, prepare_stage
from volmae.errors import CheckpointError
from volmae.evaluation.pictures import save_reconstruction_png
from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.registry import NetworkConfig, build_mae, citations
from volmae.networks.weights import load_encoder_weights, load_state_exactly
from volmae.utils.onednn import use_onednn_linears
from volmae.utils.optim import param_groups
from volmae.utils.runtime import as_layout, channels_last

__all__ = ["PretrainConfig", "PretrainResult", "init_weights", "pretrain"]


@dataclass
class PretrainConfig(StageConfig):
    """Settings of one MAE pretraining run (CLI flags and bundle configs map onto these names); ``fold=None``
    pretrains on every training image, otherwise the held-out fold's images are left out. ``init_from`` continues
    pretraining from an earlier run's weights (its ``model.pt`` or ``checkpoint.pt``, the same network) with a fresh
    optimizer and learning-rate schedule: a longer run on top of a finished one, or a pretrained model adapted to
    new unlabeled scans; for ``method="masked-unetr"`` it also takes an MAE run, whose encoder starts the UNETR.
    ``resume`` continues a stopped run instead and wins over ``init_from``. ``method``: see
    :func:`volmae.networks.registry.build_mae`."""

    out_dir: str = "runs/pretrain"
    batch_size: int = 4
    lr: float = 5e-4  # not 1.5e-3: see docs/hippocampus_study.md (the residual stream blew up at small batches)
    warmup_epochs: float = 10.0
    fold: int | None = 0
    include_unlabeled: bool = True
    mask_ratio: float | None = None
    mask_ratio_max: float | None = None  # S3D: each sample's ratio drawn from [mask_ratio, mask_ratio_max]
    norm_pix_loss: bool | None = None  # None: the method's (on; off for S3D)
    decoder_dim: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    num_pictures: int = 2
    init_from: str | None = None
    compile: bool = False  # torch.compile the masked pass (MaskedReconstruction.compile_pass)
    method: str = "auto"
    feature_size: int | None = None  # masked-unetr: the fine-tuning UNETR's (default the preset's)


@dataclass
class PretrainResult:
    out_dir: Path
    model_path: Path
    history: list[dict]
    pictures: list[Path] = field(default_factory=list)


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run (or resume) MAE pretraining; returns where the pretrained weights are."""
    setup = prepare_stage(cfg)
    device, prep, datalist, out, dist, _ = setup  # the lr after lr_scaling goes to the loop in loop_config
    items = pretraining_items(datalist, cfg.fold, cfg.include_unlabeled)
    preflight(items, datalist.in_channels, False, "pretraining image list", prep.pixdim)

    torch.manual_seed(cfg.seed)
    model, network = build_mae(
        cfg.preset,
        datalist.in_channels,
        prep.roi_size,
        cfg.patch_size,
        mask_ratio=cfg.mask_ratio,
        norm_pix_loss=cfg.norm_pix_loss,
        decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth,
        decoder_heads=cfg.decoder_heads,
        method=cfg.method,
        feature_size=cfg.feature_size,
        mask_ratio_max=cfg.mask_ratio_max,
        spacing=prep.pixdim or 1.0,  # a CNN plans its strides from it
        **encoder_overrides(cfg),
    )
    if cfg.init_from and not (cfg.resume and (out / "checkpoint.pt").exists()):
        init_weights(model, network, cfg.init_from)
    model = model.to(device)

    key = f"pretrain {asdict(prep)} {datalist.in_channels}"
    dataset = make_dataset(items, pretrain_transforms(prep), cfg.cache, cfg.cache_dir, cfg.num_workers, key)
    model.mask_shard = (dist.rank, dist.world_size)  # ranks mask their rows of the global batch's noise
    # the ViT MAE embeds its visible patches with a linear map (no convolution to speed up); the masked-volume
    # model is convolutional throughout
    layout = channels_last(model, device, cfg.channels_last and not isinstance(model, MaskedAutoencoder))
    use_onednn_linears(model, device, cfg.onednn_linear)
    if cfg.compile:
        model.compile_pass()
    loop = TrainLoop(
        model,
        param_groups(model, cfg.weight_decay),
        loop_config(cfg, setup, "pretrain", betas=(0.9, 0.95)),
        network,
        Task(prep, datalist.in_channels, channel_names=_channel_names(datalist), dataset=datalist.name),
        Provenance.now(
            "pretrain",
            dataset=datalist.name,
            dataset_dir=str(cfg.dataset_dir),
            fold=cfg.fold,
            training_cases=tuple(it["case"] for it in items),
            seed=cfg.seed,
            initialised_from=f"every weight of {cfg.init_from}" if cfg.init_from else "scratch",
            selection="the last epoch's weights",
            citation=citations(network),
            settings=asdict(cfg),
        ),
        run_config=asdict(cfg),
        dist=dist,
    )

    def step(batch):
        loss, _, _ = loop.net(as_layout(batch["image"].to(device, non_blocking=True).as_tensor(), layout))
        return loss, batch["image"].shape[0]

    state = loop.fit(dataset, step, resume=cfg.resume)
    model_path = loop.save_weights("model.pt", "the last epoch's weights")
    model.mask_shard = (0, 1)
    pictures = []
    if dist.is_main:
        pictures = reconstruction_pictures(model, items[: cfg.num_pictures], prep, out / "pictures", device, cfg.seed)
    dist.barrier()  # model.pt is on disk for every rank
    return PretrainResult(out, model_path, state.history, pictures)


def _channel_names(datalist) -> tuple[str, ...]:
    names = tuple(datalist.modality[i] for i in sorted(datalist.modality))
    return names if len(names) == datalist.in_channels else ()


def init_weights(model: torch.nn.Module, network: NetworkConfig, path: str | Path) -> None:
    """Load every weight of an earlier pretraining run into ``model`` (strict: same kind, preset, ROI and patch);
    a mismatch names the differing keys. A masked-unetr ``model`` also takes the encoder of an MAE run (every
    encoder tensor must load: same preset and patch; a changed ROI resamples the position grid)."""
    weights, source = read_weights(path)
    kind = source.kind if source else None
    if kind == "mae" and network.kind == "masked-unetr":
        report = load_encoder_weights(model.encoder, weights, source.network.encoder)
        if not report.ok:
            raise CheckpointError(f"{path}: its MAE encoder does not fit this UNETR's:\n{report.summary()}")
        return
    if kind is not None and kind != network.kind:
        raise CheckpointError(
            f"{path}: holds a {kind} model, not a {network.kind}; init_from takes the model.pt or "
            "checkpoint.pt of a volmae-pretrain run with the same preset"
        )
    load_state_exactly(
        model,
        weights,
        f"{path}: does not fit this pretraining network ({{why}}); use the same --preset, --roi-size and "
        "--patch-size as the run that wrote it",
    )


@torch.no_grad()
def reconstruction_pictures(model, items, prep, folder: Path, device, seed: int = 0) -> list[Path]:
    """Centre-crop each case to the ROI, mask it, reconstruct, and save the three-row PNG."""
    from monai.transforms import CenterSpatialCrop, SpatialPad

    model.eval()
    tf = infer_transforms(prep)
    gen = torch.Generator(device=device).manual_seed(seed)
    paths = []
    for it in items:
        img = tf({"image": it["image"]})["image"]
        img = CenterSpatialCrop(prep.roi_size)(SpatialPad(prep.roi_size)(img))
        views = model.reconstruct(img.as_tensor()[None].to(device), generator=gen)
        p = folder / f"reconstruction_{it['case']}.png"
        title = f"{it['case']}: {model.method}, {model.mask_ratio:.0%} masked, loss {views['loss'].item():.3f}"
        save_reconstruction_png(views, p, title=title)
        paths.append(p)
    return paths
