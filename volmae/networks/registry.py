"""Named model presets, shared by the Python API, the console scripts (``--preset``) and bundle ``_target_`` s.

A preset fixes the encoder's width/depth/heads/patch and the MAE decoder; sizes that depend on the task (input
channels, ROI, classes) are arguments. Every builder returns a model whose full constructor arguments are in
``model.volmae_config`` so that a checkpoint can rebuild its network without the original command line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from volmae.errors import ConfigError, VolmaeError
from volmae.networks.dynunet import build_dynunet_network, nnunet_plan
from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.masked_unetr import MaskedUNETR
from volmae.networks.masked_volume import MaskedVolumeModel
from volmae.networks.nnformer import NnFormer
from volmae.networks.nnformer_encoder import NnFormerEncoder, nearest_valid_sizes
from volmae.networks.patching import as_tuple
from volmae.networks.unetr import UNETR
from volmae.networks.vit import ViTEncoder

__all__ = [
    "Preset",
    "NnFormerPreset",
    "CnnPreset",
    "PRESETS",
    "get_preset",
    "build_encoder",
    "build_mae",
    "build_unetr",
    "build_nnformer",
    "build_dynunet",
    "build_segmenter",
    "build_from_config",
    "list_presets",
    "fit_roi",
    "SEGMENTATION_KINDS",
    "PRETRAINING_KINDS",
    "METHODS",
]

# Checkpoint ``kind`` s: the network a checkpoint holds (a segmentation network or a pretraining model).
SEGMENTATION_KINDS = ("unetr", "nnformer", "dynunet")
PRETRAINING_KINDS = ("mae", "masked-volume", "masked-unetr")
# Pretraining methods (``volmae-pretrain --method``): "auto" is MAE for a ViT preset, masked volume for nnFormer.
METHODS = {"vit": ("auto", "mae", "masked-unetr"), "nnformer": ("auto", "masked-volume"), "cnn": ()}


@dataclass(frozen=True)
class Preset:
    """A ViT preset (UNETR for segmentation, MAE for pretraining)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    feature_size: int
    description: str
    family: str = "vit"

    def encoder_kwargs(self) -> dict[str, Any]:
        keys = ("patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class NnFormerPreset:
    """An nnFormer preset (the nnFormer decoder for segmentation, masked-volume pretraining)."""

    patch_size: tuple[int, int, int]
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_sizes: tuple[int, ...]
    deep_supervision: bool
    description: str
    family: str = "nnformer"

    def encoder_kwargs(self) -> dict[str, Any]:
        keys = ("patch_size", "embed_dim", "depths", "num_heads", "window_sizes")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class CnnPreset:
    """The plain CNN peer (MONAI ``DynUNet``, planned for the ROI by :func:`volmae.networks.dynunet.nnunet_plan`):
    a segmentation network only, with no encoder to pretrain."""

    base_filters: int
    max_filters: int
    res_block: bool
    description: str
    family: str = "cnn"


PRESETS: dict[str, Preset | NnFormerPreset | CnnPreset] = {
    # CPU-sized: the hippocampus demo on 2 cores.
    "vit-tiny": Preset(192, 12, 3, 768, 8, 192, 4, 6, 16, "ViT-Ti (192 wide, 12 blocks), patch 8; CPU demo size"),
    "vit-small": Preset(384, 12, 6, 1536, 16, 384, 8, 12, 16, "ViT-S (384 wide, 12 blocks), patch 16"),
    # SelfMedMAE / UNETR paper configuration.
    "vit-base": Preset(768, 12, 12, 3072, 16, 384, 8, 12, 16, "ViT-B/16 with the SelfMedMAE decoder (384 x 8)"),
    # CPU-sized nnFormer: ROIs of multiples of 16 (the hippocampus: 48 x 64 x 48); local windows of 4^3 tokens on
    # stages 0 and 1, global attention on the coarsest stage. (Global attention on stage 1 as well, which would fit
    # 40 x 56 x 40, made a training step ~2x slower on the CPU: 1,400-token attention maps.)
    "nnformer-tiny": NnFormerPreset(
        (2, 2, 2), 48, (2, 2, 2), (3, 6, 12), (4, 4, 0), True, "nnFormer, 48 wide, 3 stages, patch 2; CPU size"
    ),
    # nnFormer paper: Synapse / BTCV (crop 64 x 128 x 128) and brain tumour (crop 128^3) configurations.
    "nnformer-synapse": NnFormerPreset(
        (2, 4, 4), 192, (2, 2, 2, 2), (6, 12, 24, 48), (4, 4, 8, 4), True, "nnFormer Synapse/BTCV, 64x128x128"
    ),
    "nnformer-tumor": NnFormerPreset(
        (4, 4, 4), 96, (2, 2, 2, 2), (3, 6, 12, 24), (4, 4, 8, 4), True, "nnFormer brain tumour, 128^3"
    ),
    # nnU-Net-like plain CNN: the label-efficiency study's peer (filters 32 .. 320, residual blocks off).
    "dynunet": CnnPreset(32, 320, False, "MONAI DynUNet, nnU-Net plan for the ROI; CNN peer, no pretraining"),
}


def list_presets() -> str:
    return "\n".join(f"{k:17s} {v.description}" for k, v in PRESETS.items())


def get_preset(name: str, family: str | None = None) -> Preset | NnFormerPreset | CnnPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    if family is not None and p.family != family:
        others = ", ".join(k for k, v in PRESETS.items() if v.family == family)
        raise ConfigError(f"preset {name!r} is an {p.family} preset; this needs a {family} one ({others})")
    return p


def fit_roi(preset: str, roi_size: Sequence[int]) -> tuple[int, int, int]:
    """The smallest ROI ``>= roi_size`` per axis that the preset's network tiles: a multiple of the ViT patch; for
    nnFormer, sizes whose stage grids its windows divide; for the CNN peer, a multiple of 8 (three down-samplings
    of its plan at least)."""
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or any(r < 1 for r in roi):
        raise ConfigError(f"roi_size={tuple(roi_size)}: expected three positive ints")
    p = get_preset(preset)
    if isinstance(p, NnFormerPreset):
        return tuple(int(r) for r in nearest_valid_sizes(roi, p.patch_size, p.window_sizes)[1])  # type: ignore[return-value]
    step = p.patch_size if isinstance(p, Preset) else 8
    return tuple(-(-r // step) * step for r in roi)  # type: ignore[return-value]


@contextlib.contextmanager
def _named(preset: str) -> Iterator[None]:
    """A size or argument the network refuses (e.g. an ROI its patches / windows do not tile) becomes a
    :class:`ConfigError` naming the preset, so the console scripts print one line instead of a traceback."""
    try:
        yield
    except ValueError as e:
        if isinstance(e, VolmaeError):
            raise
        raise ConfigError(f"preset {preset!r}: {e}") from None


def _config_of(module, kwargs: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    cfg.update(img_size=list(module.img_size), patch_size=list(module.patch_size))
    return cfg


def build_encoder(
    preset: str = "vit-base",
    in_channels: int = 1,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    **overrides: Any,
) -> ViTEncoder | NnFormerEncoder:
    """The encoder of a preset (:class:`ViTEncoder` or :class:`NnFormerEncoder`); ``overrides`` replace any of its
    constructor arguments."""
    p = get_preset(preset)
    if isinstance(p, CnnPreset):
        raise ConfigError(f"preset {preset!r} is a CNN without a separate encoder: nothing to pretrain or extract")
    kwargs: dict[str, Any] = dict(in_channels=in_channels, img_size=img_size, **p.encoder_kwargs())
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    kwargs.update(overrides)
    with _named(preset):
        enc = (NnFormerEncoder if isinstance(p, NnFormerPreset) else ViTEncoder)(**kwargs)
    enc.volmae_config = _config_of(enc, kwargs)
    return enc


def build_mae(
    preset: str = "vit-base",
    in_channels: int = 1,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    mask_ratio: float | None = None,
    norm_pix_loss: bool = True,
    decoder_dim: int | None = None,
    decoder_depth: int | None = None,
    decoder_heads: int | None = None,
    method: str = "auto",
    feature_size: int | None = None,
    **encoder_overrides: Any,
) -> MaskedAutoencoder | MaskedVolumeModel | MaskedUNETR:
    """The pretraining model of a preset. ``method`` ``"auto"``: an MAE for a ViT (mask ratio 0.75 by default,
    decoder sizes from the preset), masked-volume reconstruction for nnFormer (mask ratio 0.6, linear head unless
    ``decoder_dim``); ``"masked-unetr"`` (ViT presets): masked-volume reconstruction by the whole UNETR of the
    preset (mask ratio 0.6; :class:`MaskedUNETR`), ``feature_size`` as the fine-tuning UNETR's (default the
    preset's)."""
    p = get_preset(preset)
    family = p.family
    if family == "cnn":
        raise ConfigError(f"preset {preset!r} is the CNN peer: volmae pretrains ViT and nnFormer encoders only")
    if method not in METHODS[family]:
        raise ConfigError(
            f"method={method!r} does not apply to the {family} preset {preset!r}; choose one of {METHODS[family]}"
        )
    if feature_size is not None and method != "masked-unetr":
        raise ConfigError("feature_size sizes the UNETR decoder of method masked-unetr only")
    enc = build_encoder(preset, in_channels, img_size, patch_size, **encoder_overrides)
    model: MaskedAutoencoder | MaskedVolumeModel | MaskedUNETR
    if family == "nnformer" or method == "masked-unetr":
        if decoder_depth is not None or decoder_heads is not None:
            raise ConfigError(
                "decoder_depth / decoder_heads set the MAE's transformer decoder; masked-volume pretraining "
                + (
                    "(nnFormer presets) has a linear head, sized by decoder_dim only"
                    if family == "nnformer"
                    else "by method masked-unetr reconstructs with the UNETR's own decoder"
                )
            )
    if family == "nnformer":
        kwargs = dict(
            mask_ratio=0.6 if mask_ratio is None else mask_ratio,
            norm_pix_loss=norm_pix_loss,
            decoder_dim=decoder_dim or 0,
        )
        with _named(preset):
            model, kind = MaskedVolumeModel(enc, **kwargs), "masked-volume"
    elif method == "masked-unetr":
        if decoder_dim is not None:
            raise ConfigError("decoder_dim does not apply to method masked-unetr: the UNETR decoder reconstructs")
        kwargs = dict(
            feature_size=p.feature_size if feature_size is None else feature_size,
            skip_norm=True,
            mask_ratio=0.6 if mask_ratio is None else mask_ratio,
            norm_pix_loss=norm_pix_loss,
        )
        with _named(preset):
            model, kind = MaskedUNETR(enc, **kwargs), "masked-unetr"
    else:
        kwargs = dict(
            decoder_dim=p.decoder_dim if decoder_dim is None else decoder_dim,
            decoder_depth=p.decoder_depth if decoder_depth is None else decoder_depth,
            decoder_heads=p.decoder_heads if decoder_heads is None else decoder_heads,
            mask_ratio=0.75 if mask_ratio is None else mask_ratio,
            norm_pix_loss=norm_pix_loss,
        )
        with _named(preset):
            model, kind = MaskedAutoencoder(enc, **kwargs), "mae"
    model.volmae_config = {"kind": kind, "preset": preset, "encoder": enc.volmae_config, _HEAD_KEY[kind]: kwargs}
    return model


def build_unetr(
    preset: str = "vit-base",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    feature_size: int | None = None,
    pretrained: str | Path | None = None,
    norm_name: str = "instance",
    skip_norm: bool = True,
    **encoder_overrides: Any,
) -> UNETR:
    """A UNETR on a ViT preset encoder; with ``pretrained`` (a volmae/MONAI checkpoint path) the encoder is loaded
    from it and the load report is kept in ``model.load_report``."""
    p = get_preset(preset, "vit")
    enc = build_encoder(preset, in_channels, img_size, patch_size, **encoder_overrides)
    unetr_kwargs = dict(
        out_channels=out_channels,
        feature_size=p.feature_size if feature_size is None else feature_size,
        norm_name=norm_name,
        skip_norm=skip_norm,
    )
    with _named(preset):
        model = UNETR(enc, **unetr_kwargs)
    model.volmae_config = {"kind": "unetr", "preset": preset, "encoder": enc.volmae_config, "unetr": unetr_kwargs}
    return _with_pretrained(model, pretrained)


def build_nnformer(
    preset: str = "nnformer-tiny",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    pretrained: str | Path | None = None,
    deep_supervision: bool | None = None,
    decoder_depths: Sequence[int] | None = None,
    **encoder_overrides: Any,
) -> NnFormer:
    """An nnFormer on an nnFormer preset encoder (``deep_supervision`` defaults to the preset's); ``pretrained``
    as in :func:`build_unetr`."""
    p = get_preset(preset, "nnformer")
    enc = build_encoder(preset, in_channels, img_size, patch_size, **encoder_overrides)
    kwargs = dict(
        out_channels=out_channels,
        decoder_depths=None if decoder_depths is None else list(decoder_depths),
        deep_supervision=p.deep_supervision if deep_supervision is None else deep_supervision,
    )
    with _named(preset):
        model = NnFormer(enc, **kwargs)
    model.volmae_config = {"kind": "nnformer", "preset": preset, "encoder": enc.volmae_config, "nnformer": kwargs}
    return _with_pretrained(model, pretrained)


def build_dynunet(
    preset: str = "dynunet",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    spacing: Sequence[float] | float = 1.0,
) -> torch.nn.Module:
    """The CNN peer: MONAI's ``DynUNet`` with the nnU-Net plan (:func:`volmae.networks.dynunet.nnunet_plan`) for an
    ROI of ``img_size`` voxels at ``spacing`` mm. Fully convolutional: it segments windows of any size that its
    strides divide."""
    p = get_preset(preset, "cnn")
    with _named(preset):
        plan = nnunet_plan(img_size, spacing, base_filters=p.base_filters, max_filters=p.max_filters)
        kwargs = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            **plan,
            upsample_kernel_size=plan["strides"][1:],
            res_block=p.res_block,
        )
        model = build_dynunet_network(**kwargs)
    size = list(as_tuple(img_size, 3, "img_size"))  # valid: the plan checked it
    model.volmae_config = {"kind": "dynunet", "preset": preset, "img_size": size, "dynunet": kwargs}
    model.load_report = None
    return model


def build_segmenter(
    preset: str = "vit-base",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    pretrained: str | Path | None = None,
    feature_size: int | None = None,
    skip_norm: bool = True,
    deep_supervision: bool | None = None,
    spacing: Sequence[float] | float = 1.0,
    **encoder_overrides: Any,
) -> UNETR | NnFormer | torch.nn.Module:
    """The segmentation network of any preset: UNETR for a ViT preset, nnFormer for an nnFormer one, DynUNet for
    the CNN peer (planned for ``img_size`` at ``spacing``, which only it uses). The options of the other families
    must stay at their defaults (``feature_size``/``skip_norm`` are UNETR's, ``deep_supervision`` nnFormer's)."""
    p = get_preset(preset)
    if isinstance(p, CnnPreset):
        given = {
            "patch_size": patch_size is not None,
            "pretrained": bool(pretrained),
            "feature_size": feature_size is not None,
            "skip_norm": not skip_norm,
            "deep_supervision": bool(deep_supervision),
            **{k: True for k in encoder_overrides},
        }
        bad = [k for k, v in given.items() if v]
        if bad:
            raise ConfigError(f"preset {preset!r} (the CNN peer) takes no {', '.join(bad)}: it is trained from scratch")
        return build_dynunet(preset, in_channels, out_channels, img_size, spacing)
    if isinstance(p, NnFormerPreset):
        if feature_size is not None or not skip_norm:
            raise ConfigError(f"feature_size / skip_norm are UNETR options; preset {preset!r} builds an nnFormer")
        return build_nnformer(
            preset, in_channels, out_channels, img_size, patch_size, pretrained, deep_supervision, **encoder_overrides
        )
    if deep_supervision:
        raise ConfigError(f"deep_supervision is an nnFormer option; preset {preset!r} builds a UNETR")
    return build_unetr(
        preset, in_channels, out_channels, img_size, patch_size, feature_size, pretrained, skip_norm=skip_norm,
        **encoder_overrides,
    )  # fmt: skip


def _with_pretrained(model, pretrained: str | Path | None):
    model.load_report = None
    if pretrained:
        from volmae.networks.weights import load_pretrained

        model.load_report = load_pretrained(model, pretrained)
    return model


def preset_as_dict(name: str) -> dict[str, Any]:
    return asdict(get_preset(name))


# kind -> (encoder class, network class, key of the network's own arguments in the config)
_NETWORKS = {
    "mae": (ViTEncoder, MaskedAutoencoder, "mae"),
    "unetr": (ViTEncoder, UNETR, "unetr"),
    "masked-volume": (NnFormerEncoder, MaskedVolumeModel, "masked_volume"),
    "masked-unetr": (ViTEncoder, MaskedUNETR, "masked_unetr"),
    "nnformer": (NnFormerEncoder, NnFormer, "nnformer"),
}
_HEAD_KEY = {k: v[2] for k, v in _NETWORKS.items()}


def build_from_config(
    config: dict[str, Any],
) -> MaskedAutoencoder | UNETR | MaskedVolumeModel | MaskedUNETR | NnFormer | torch.nn.Module:
    """Rebuild a network from the ``volmae_config`` stored in a checkpoint (no preset lookup needed)."""
    kind = config.get("kind")
    if kind == "dynunet" and isinstance(config.get("dynunet"), dict):
        model = build_dynunet_network(**config["dynunet"])
        model.volmae_config = config
        return model
    if kind not in _NETWORKS or "encoder" not in config:
        raise ConfigError(f"checkpoint config describes no volmae network (kind={kind!r})")
    enc_cls, net_cls, key = _NETWORKS[kind]
    enc = enc_cls(**config["encoder"])
    enc.volmae_config = dict(config["encoder"])
    model = net_cls(enc, **config[key])
    model.volmae_config = config
    return model
