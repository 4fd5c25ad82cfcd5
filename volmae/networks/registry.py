"""Named model presets, shared by the Python API, the console scripts (``--preset``) and bundle ``_target_`` s.

A preset fixes the encoder's width/depth/heads/patch and the MAE decoder; sizes that depend on the task (input
channels, ROI, classes) are arguments. Every builder returns :class:`Built`: the network and its
:class:`NetworkConfig`, every constructor argument, from which :func:`build_network` rebuilds the same network
(a model file stores the config, :mod:`volmae.artifact`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from volmae.errors import ConfigError
from volmae.networks.config import (
    ENCODER_KINDS,
    PRETRAINING_KINDS,
    SEGMENTATION_KINDS,
    Built,
    NetworkConfig,
    build_network,
    named,
)
from volmae.networks.dynunet import nnunet_plan
from volmae.networks.nnformer_encoder import nearest_valid_sizes
from volmae.networks.patching import as_tuple
from volmae.utils.io import plain

__all__ = [
    "Preset",
    "NnFormerPreset",
    "CnnPreset",
    "ResEncPreset",
    "PrimusPreset",
    "PRESETS",
    "get_preset",
    "NetworkConfig",
    "Built",
    "build_network",
    "build_encoder",
    "build_mae",
    "build_unetr",
    "build_nnformer",
    "build_dynunet",
    "build_resenc",
    "build_segmenter",
    "segmenter_config",
    "list_presets",
    "fit_roi",
    "SEGMENTATION_KINDS",
    "PRETRAINING_KINDS",
    "ENCODER_KINDS",
    "METHODS",
    "citations",
    "FinetuneRecipe",
    "RECIPES",
]

# Pretraining methods (``volmae-pretrain --method``): "auto" is MAE for a ViT preset, masked volume for nnFormer,
# S3D sparse masking for the residual-encoder CNN, the whole-network MAE for Primus (masked-volume reconstruction by
# the whole UNETR for a Primus preset with the UNETR decoder).
METHODS = {
    "vit": ("auto", "mae", "masked-unetr"),
    "nnformer": ("auto", "masked-volume"),
    "resenc": ("auto", "s3d"),
    "primus": ("auto", "mae", "masked-unetr"),
    "cnn": (),
}


class _EncoderPreset:
    """A preset whose encoder takes the fields named in ``encoder_keys`` as constructor arguments."""

    encoder_keys: ClassVar[tuple[str, ...]] = ()

    def encoder_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.encoder_keys}


@dataclass(frozen=True)
class Preset(_EncoderPreset):
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

    encoder_keys: ClassVar[tuple[str, ...]] = ("patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")


@dataclass(frozen=True)
class NnFormerPreset(_EncoderPreset):
    """An nnFormer preset (the nnFormer decoder for segmentation, masked-volume pretraining)."""

    patch_size: tuple[int, int, int]
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_sizes: tuple[int, ...]
    deep_supervision: bool
    description: str
    family: str = "nnformer"

    encoder_keys: ClassVar[tuple[str, ...]] = ("patch_size", "embed_dim", "depths", "num_heads", "window_sizes")


@dataclass(frozen=True)
class CnnPreset:
    """The plain CNN peer (MONAI ``DynUNet``, planned for the ROI by :func:`volmae.networks.dynunet.nnunet_plan`):
    a segmentation network only, with no encoder to pretrain."""

    base_filters: int
    max_filters: int
    res_block: bool
    description: str
    family: str = "cnn"


@dataclass(frozen=True)
class ResEncPreset:
    """A residual-encoder CNN U-Net preset (:mod:`volmae.networks.resenc`): widths ``base_filters * 2^s`` capped at
    ``max_filters`` and ``blocks`` residual blocks per stage; kernels and strides are planned for the ROI and spacing
    (:func:`volmae.networks.dynunet.nnunet_plan`, up to ``len(blocks)`` stages). Pretrained by S3D sparse masking."""

    base_filters: int
    max_filters: int
    blocks: tuple[int, ...]
    description: str
    family: str = "resenc"


@dataclass(frozen=True)
class PrimusPreset(_EncoderPreset):
    """A Primus-style ViT preset (:mod:`volmae.networks.primus`): EVA-02 blocks with 3D RoPE on ``patch_size``
    tokens; ``decoder`` ``"patch"``: Primus' light patch decoder for segmentation, the whole-network MAE
    (``decoder_depth`` mixing blocks) for pretraining; ``"unetr"``: UNETR's decoder (convolutional skips from the
    image and from blocks 3 / 6 / 9, ``feature_size`` wide at full resolution), pretrained as a whole by masked-volume
    reconstruction (method ``masked-unetr``)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    decoder_depth: int
    drop_path_rate: float
    description: str
    family: str = "primus"
    tokenizer: str = "patch"  # "patch": one strided conv, as Primus; "conv": a small strided-conv stack (PrimusV2-like)
    decoder: str = "patch"
    feature_size: int = 16

    encoder_keys: ClassVar[tuple[str, ...]] = (
        "patch_size", "hidden_size", "num_layers", "num_heads", "drop_path_rate", "tokenizer"
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.decoder not in ("patch", "unetr"):
            raise ConfigError(f"decoder={self.decoder!r}: expected 'patch' or 'unetr'")


PRESETS: dict[str, Preset | NnFormerPreset | CnnPreset | ResEncPreset | PrimusPreset] = {
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
    # Residual-encoder U-Nets. CPU-sized: widths 24 .. 192 and 1-2-2-2 residual blocks (the hippocampus plan has 4
    # stages), about as fast per step on 2 cores as the DynUNet peer. nnU-Net's / nnssl's ResEnc-L: 32 .. 320 and
    # 1-3-4-6-6-6 blocks (the S3D paper's network, pretrained there on 160^3 windows at 1 mm).
    "resenc-tiny": ResEncPreset(24, 192, (1, 2, 2, 2, 2, 2), "ResEnc U-Net, 24..192 wide, 1-2-2-2 blocks; CPU size"),
    "resenc-l": ResEncPreset(32, 320, (1, 3, 4, 6, 6, 6), "nnU-Net ResEnc-L U-Net, 32..320 wide, 1-3-4-6-6-6 blocks"),
    # Primus-style ViTs, 8^3 tokens. CPU-sized: ViT-Ti's width and depth (192 wide, 12 blocks; 4 heads of 48, as 3D
    # RoPE needs head widths divisible by 6), so a step costs about what UNETR-Ti's does. Primus-S/B/M/L: the paper's
    # shapes (Wald, Roy, Isensee et al. 2025), drop path 0.2.
    "primus-tiny": PrimusPreset(192, 12, 4, 8, 2, 0.1, "Primus-style ViT, 192 wide, 12 blocks, 8^3 tokens; CPU size"),
    # The same with the conv tokenizer, which led the patch tokenizer on every training-side split of the hippocampus
    # (docs/results.md, the Primus recipe search): the one the Primus study runs.
    "primus-tiny-conv": PrimusPreset(
        192, 12, 4, 8, 2, 0.1, "primus-tiny with the conv tokenizer (strided 3^3 conv stages)", tokenizer="conv"
    ),
    # Its encoder under UNETR's decoder: on crops of 5 x 7 x 5 tokens the patch decoder decides every boundary voxel
    # from a token 8 voxels wide, where UNETR-Ti's decoder has full-resolution convolutional skips (docs/results.md).
    "primus-tiny-conv-unetr": PrimusPreset(
        192, 12, 4, 8, 2, 0.1, "primus-tiny-conv's encoder, UNETR's conv decoder", tokenizer="conv", decoder="unetr"
    ),
    "primus-s": PrimusPreset(396, 12, 6, 8, 2, 0.2, "Primus-S: 396 wide, 12 blocks, 6 heads, 8^3 tokens"),
    "primus-b": PrimusPreset(792, 12, 12, 8, 2, 0.2, "Primus-B: 792 wide, 12 blocks, 12 heads, 8^3 tokens"),
    "primus-m": PrimusPreset(864, 16, 12, 8, 2, 0.2, "Primus-M: 864 wide, 16 blocks, 12 heads, 8^3 tokens"),
    "primus-l": PrimusPreset(1056, 24, 16, 8, 2, 0.2, "Primus-L: 1056 wide, 24 blocks, 16 heads, 8^3 tokens"),
    # nnU-Net-like plain CNN: the label-efficiency study's peer (filters 32 .. 320, residual blocks off).
    "dynunet": CnnPreset(32, 320, False, "MONAI DynUNet, nnU-Net plan for the ROI; CNN peer, no pretraining"),
}


def _unetr_primus() -> str:
    """The Primus presets with the UNETR decoder, for errors."""
    return ", ".join(k for k, v in PRESETS.items() if isinstance(v, PrimusPreset) and v.decoder == "unetr")


def list_presets() -> str:
    return "\n".join(f"{k:17s} {v.description}" for k, v in PRESETS.items())


def get_preset(
    name: str, family: str | None = None
) -> Preset | NnFormerPreset | CnnPreset | ResEncPreset | PrimusPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    if family is not None and p.family != family:
        others = ", ".join(k for k, v in PRESETS.items() if v.family == family)
        raise ConfigError(f"preset {name!r} is an {p.family} preset; this needs a {family} one ({others})")
    return p


def fit_roi(preset: str, roi_size: Sequence[int]) -> tuple[int, int, int]:
    """The smallest ROI ``>= roi_size`` per axis that the preset's network tiles: a multiple of the ViT's (or
    Primus') patch; for
    nnFormer, sizes whose stage grids its windows divide; for the CNNs, a multiple of 8 (three down-samplings of
    their plan at least)."""
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or any(r < 1 for r in roi):
        raise ConfigError(f"roi_size={tuple(roi_size)}: expected three positive ints")
    p = get_preset(preset)
    if isinstance(p, NnFormerPreset):
        return tuple(int(r) for r in nearest_valid_sizes(roi, p.patch_size, p.window_sizes)[1])  # type: ignore[return-value]
    step = p.patch_size if isinstance(p, Preset | PrimusPreset) else 8
    return tuple(-(-r // step) * step for r in roi)  # type: ignore[return-value]


def _check_encoder_overrides(preset: str, family: str, overrides: Mapping[str, Any]) -> None:
    """Refuse encoder options the preset's family does not have, naming the family that has them (their values are
    the encoder's to check: :func:`~volmae.networks.config.build` names the preset in its error)."""
    if "tokenizer" not in overrides:
        return
    if family != "primus":
        raise ConfigError(
            f"tokenizer: preset {preset!r} ({family}) has no tokenizer choice; it is a Primus option (e.g. primus-tiny)"
        )


def _resenc_encoder_config(
    preset: str,
    in_channels: int,
    img_size: Sequence[int] | int,
    patch_size: Sequence[int] | int | None,
    spacing: Sequence[float] | float,
    overrides: Mapping[str, Any],
) -> NetworkConfig:
    p = get_preset(preset, "resenc")
    if patch_size is not None:
        raise ConfigError(f"patch_size: preset {preset!r} is a CNN (no patches); its strides follow the ROI")
    with named(preset):
        plan = nnunet_plan(img_size, spacing, max_levels=len(p.blocks) - 1, base_filters=p.base_filters,
                           max_filters=p.max_filters)  # fmt: skip
        size = list(as_tuple(img_size, 3, "img_size"))
    kwargs: dict[str, Any] = dict(in_channels=in_channels, img_size=size, blocks=list(p.blocks[: len(plan["strides"])]))
    kwargs.update(plan)
    kwargs.update(overrides)
    return NetworkConfig("resenc-encoder", preset, {}, plain(kwargs))


def _encoder_config(
    preset: str,
    in_channels: int,
    img_size: Sequence[int] | int,
    patch_size: Sequence[int] | int | None,
    overrides: Mapping[str, Any],
    spacing: Sequence[float] | float = 1.0,
) -> NetworkConfig:
    p = get_preset(preset)
    if isinstance(p, CnnPreset):
        raise ConfigError(f"preset {preset!r} is a CNN without a separate encoder: nothing to pretrain or extract")
    _check_encoder_overrides(preset, p.family, overrides)
    if isinstance(p, ResEncPreset):
        return _resenc_encoder_config(preset, in_channels, img_size, patch_size, spacing, overrides)
    kwargs: dict[str, Any] = dict(in_channels=in_channels, img_size=img_size, **p.encoder_kwargs())
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    kwargs.update(overrides)
    with named(preset):  # normalise the sizes (an int means a cube) and check them as the encoder does
        kwargs["img_size"] = list(as_tuple(kwargs["img_size"], 3, "img_size"))
        kwargs["patch_size"] = list(as_tuple(kwargs["patch_size"], 3, "patch_size"))
    kind = {"nnformer": "nnformer-encoder", "primus": "primus-encoder"}.get(p.family, "vit-encoder")
    return NetworkConfig(kind, preset, {}, plain(kwargs))


def _built(config: NetworkConfig) -> Built:
    return Built(build_network(config), config)


def build_encoder(
    preset: str = "vit-base",
    in_channels: int = 1,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    spacing: Sequence[float] | float = 1.0,
    **overrides: Any,
) -> Built:
    """The encoder of a preset (:class:`ViTEncoder`, :class:`NnFormerEncoder` or :class:`ResEncEncoder`, planned
    for ``img_size`` at ``spacing``, which only it uses), a feature extractor with no head; ``overrides`` replace any
    of its constructor arguments."""
    return _built(_encoder_config(preset, in_channels, img_size, patch_size, overrides, spacing))


def build_mae(
    preset: str = "vit-base",
    in_channels: int = 1,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    mask_ratio: float | None = None,
    norm_pix_loss: bool | None = None,
    decoder_dim: int | None = None,
    decoder_depth: int | None = None,
    decoder_heads: int | None = None,
    method: str = "auto",
    feature_size: int | None = None,
    mask_ratio_max: float | None = None,
    spacing: Sequence[float] | float = 1.0,
    **encoder_overrides: Any,
) -> Built:
    """The pretraining model of a preset. ``method`` ``"auto"``: an MAE for a ViT (mask ratio 0.75 by default,
    decoder sizes from the preset), masked-volume reconstruction for nnFormer (mask ratio 0.6, linear head unless
    ``decoder_dim``), S3D sparse masking of the whole U-Net for a ResEnc preset (mask ratio 0.75, or drawn per sample
    up to ``mask_ratio_max``; blocks of the encoder's total stride, planned for ``img_size`` at ``spacing``;
    :class:`SparseMaskedUNet`), the whole-network MAE for a Primus preset (mask ratio 0.75, ``decoder_depth`` mixing
    blocks, the patch decoder reconstructs; :class:`PrimusMAE`; for a Primus preset with the UNETR decoder,
    ``"masked-unetr"``); ``"masked-unetr"`` (ViT presets and Primus ones with the UNETR decoder): masked-volume
    reconstruction by the whole UNETR of the preset (mask ratio 0.6; :class:`MaskedUNETR`), ``feature_size`` as the
    fine-tuning UNETR's (default the preset's). ``norm_pix_loss`` (regress per-unit normalised voxels) defaults to
    on, off for S3D."""
    p = get_preset(preset)
    family = p.family
    if family == "cnn":
        raise ConfigError(
            f"preset {preset!r} is the plain CNN peer: pretrain a ResEnc U-Net instead (e.g. --preset resenc-tiny)"
        )
    if method not in METHODS[family]:
        raise ConfigError(
            f"method={method!r} does not apply to the {family} preset {preset!r}; choose one of {METHODS[family]}"
        )
    if method == "auto" and isinstance(p, PrimusPreset) and p.decoder == "unetr":
        method = "masked-unetr"  # a Primus with UNETR's decoder pretrains as a whole UNETR, like a ViT's
    if feature_size is not None and method != "masked-unetr":
        raise ConfigError("feature_size sizes the UNETR decoder of method masked-unetr only")
    if mask_ratio_max is not None and family != "resenc":
        raise ConfigError("mask_ratio_max (a mask ratio drawn per sample) applies to S3D pretraining (ResEnc presets)")
    enc = _encoder_config(preset, in_channels, img_size, patch_size, encoder_overrides, spacing).encoder
    if method == "masked-unetr" and isinstance(p, PrimusPreset) and p.decoder != "unetr":
        raise ConfigError(
            f"method=masked-unetr pretrains a UNETR decoder, which preset {preset!r} (patch decoder) does not "
            f"have: use its MAE (method auto) or a Primus preset with the UNETR decoder ({_unetr_primus()})"
        )
    if family == "primus" and method != "masked-unetr":
        if decoder_dim is not None or decoder_heads is not None:
            raise ConfigError(
                "decoder_dim / decoder_heads: the Primus MAE mixes at the encoder's width and heads and reconstructs "
                "with the segmentation network's patch decoder (decoder_depth sets its mixing blocks)"
            )
        kwargs = dict(
            decoder_depth=p.decoder_depth if decoder_depth is None else decoder_depth,
            mask_ratio=0.75 if mask_ratio is None else mask_ratio,
            norm_pix_loss=True if norm_pix_loss is None else norm_pix_loss,
        )
        return _built(NetworkConfig("primus-mae", preset, kwargs, enc))
    if family == "resenc":
        if decoder_dim is not None or decoder_depth is not None or decoder_heads is not None:
            raise ConfigError("decoder_dim / depth / heads: S3D reconstructs with the U-Net's own decoder")
        kwargs = dict(
            mask_ratio=0.75 if mask_ratio is None else mask_ratio,
            mask_ratio_max=mask_ratio_max,
            norm_pix_loss=bool(norm_pix_loss),
        )
        return _built(NetworkConfig("s3d", preset, kwargs, enc))
    norm_pix_loss = True if norm_pix_loss is None else norm_pix_loss
    if (family == "nnformer" or method == "masked-unetr") and (decoder_depth is not None or decoder_heads is not None):
        raise ConfigError(
            "decoder_depth / decoder_heads set the MAE's transformer decoder; masked-volume pretraining "
            + (
                "(nnFormer presets) has a linear head, sized by decoder_dim only"
                if family == "nnformer"
                else "by method masked-unetr reconstructs with the UNETR's own decoder"
            )
        )
    if family == "nnformer":
        kind = "masked-volume"
        kwargs = dict(
            mask_ratio=0.6 if mask_ratio is None else mask_ratio,
            norm_pix_loss=norm_pix_loss,
            decoder_dim=decoder_dim or 0,
        )
    elif method == "masked-unetr":
        if decoder_dim is not None:
            raise ConfigError("decoder_dim does not apply to method masked-unetr: the UNETR decoder reconstructs")
        kind = "primus-masked-unetr" if family == "primus" else "masked-unetr"
        kwargs = dict(
            feature_size=p.feature_size if feature_size is None else feature_size,
            skip_norm=True,
            mask_ratio=0.6 if mask_ratio is None else mask_ratio,
            norm_pix_loss=norm_pix_loss,
        )
    else:
        kind = "mae"
        kwargs = dict(
            decoder_dim=p.decoder_dim if decoder_dim is None else decoder_dim,
            decoder_depth=p.decoder_depth if decoder_depth is None else decoder_depth,
            decoder_heads=p.decoder_heads if decoder_heads is None else decoder_heads,
            mask_ratio=0.75 if mask_ratio is None else mask_ratio,
            norm_pix_loss=norm_pix_loss,
        )
    return _built(NetworkConfig(kind, preset, kwargs, enc))


def _unetr_config(
    preset: str,
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int] | int,
    patch_size: Sequence[int] | int | None,
    feature_size: int | None,
    norm_name: str,
    skip_norm: bool,
    encoder_overrides: Mapping[str, Any],
) -> NetworkConfig:
    p = get_preset(preset)
    primus = isinstance(p, PrimusPreset) and p.decoder == "unetr"
    if not primus:
        p = get_preset(preset, "vit")  # refuses the other families, naming the ones that fit
    enc = _encoder_config(preset, in_channels, img_size, patch_size, encoder_overrides).encoder
    kwargs = dict(
        out_channels=out_channels,
        feature_size=p.feature_size if feature_size is None else feature_size,
        norm_name=norm_name,
        skip_norm=skip_norm,
    )
    return NetworkConfig("primus-unetr" if primus else "unetr", preset, kwargs, enc)


def build_unetr(
    preset: str = "vit-base",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    feature_size: int | None = None,
    norm_name: str = "instance",
    skip_norm: bool = True,
    **encoder_overrides: Any,
) -> Built:
    """A UNETR on a ViT preset encoder, or on a Primus one whose preset has the UNETR decoder (pretrained weights load
    afterwards: :func:`volmae.artifact.load_pretrained`)."""
    return _built(
        _unetr_config(
            preset,
            in_channels,
            out_channels,
            img_size,
            patch_size,
            feature_size,
            norm_name,
            skip_norm,
            encoder_overrides,
        )  # fmt: skip
    )


def _nnformer_config(
    preset: str,
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int] | int,
    patch_size: Sequence[int] | int | None,
    deep_supervision: bool | None,
    decoder_depths: Sequence[int] | None,
    encoder_overrides: Mapping[str, Any],
) -> NetworkConfig:
    p = get_preset(preset, "nnformer")
    enc = _encoder_config(preset, in_channels, img_size, patch_size, encoder_overrides).encoder
    kwargs = dict(
        out_channels=out_channels,
        decoder_depths=None if decoder_depths is None else list(decoder_depths),
        deep_supervision=p.deep_supervision if deep_supervision is None else bool(deep_supervision),
    )
    return NetworkConfig("nnformer", preset, kwargs, enc)


def build_nnformer(
    preset: str = "nnformer-tiny",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    deep_supervision: bool | None = None,
    decoder_depths: Sequence[int] | None = None,
    **encoder_overrides: Any,
) -> Built:
    """An nnFormer on an nnFormer preset encoder (``deep_supervision`` defaults to the preset's)."""
    return _built(
        _nnformer_config(
            preset, in_channels, out_channels, img_size, patch_size, deep_supervision, decoder_depths, encoder_overrides
        )
    )


def _dynunet_config(
    preset: str, in_channels: int, out_channels: int, img_size: Sequence[int] | int, spacing: Sequence[float] | float
) -> NetworkConfig:
    p = get_preset(preset, "cnn")
    with named(preset):
        plan = nnunet_plan(img_size, spacing, base_filters=p.base_filters, max_filters=p.max_filters)
        size = as_tuple(img_size, 3, "img_size")
    kwargs = dict(
        in_channels=in_channels,
        out_channels=out_channels,
        **plan,
        upsample_kernel_size=plan["strides"][1:],
        res_block=p.res_block,
    )
    return NetworkConfig("dynunet", preset, plain(kwargs), None, tuple(size))


def build_dynunet(
    preset: str = "dynunet",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    spacing: Sequence[float] | float = 1.0,
) -> Built:
    """The CNN peer: MONAI's ``DynUNet`` with the nnU-Net plan (:func:`volmae.networks.dynunet.nnunet_plan`) for an
    ROI of ``img_size`` voxels at ``spacing`` mm. Fully convolutional: it segments windows of any size that its
    strides divide."""
    return _built(_dynunet_config(preset, in_channels, out_channels, img_size, spacing))


def build_resenc(
    preset: str = "resenc-tiny",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    spacing: Sequence[float] | float = 1.0,
) -> Built:
    """A residual-encoder U-Net planned for an ROI of ``img_size`` voxels at ``spacing`` mm (S3D-pretrained weights
    load afterwards, encoder and decoder: :func:`volmae.artifact.load_pretrained`). Fully convolutional."""
    return _built(segmenter_config(preset, in_channels, out_channels, img_size, spacing=spacing))


def segmenter_config(
    preset: str = "vit-base",
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    feature_size: int | None = None,
    skip_norm: bool = True,
    deep_supervision: bool | None = None,
    spacing: Sequence[float] | float = 1.0,
    **encoder_overrides: Any,
) -> NetworkConfig:
    """The :class:`NetworkConfig` of :func:`build_segmenter` (nothing is built); the bundles' ``network_config``."""
    p = get_preset(preset)
    _check_encoder_overrides(preset, p.family, encoder_overrides)
    if isinstance(p, CnnPreset | ResEncPreset):
        given = {
            "patch_size": patch_size is not None,
            "feature_size": feature_size is not None,
            "skip_norm": not skip_norm,
            "deep_supervision": bool(deep_supervision),
            **{k: True for k in encoder_overrides if isinstance(p, CnnPreset)},  # a ResEnc encoder takes them
        }
        bad = [k for k, v in given.items() if v]
        if bad:
            raise ConfigError(f"preset {preset!r} (a CNN) takes no {', '.join(bad)}: its plan follows the ROI")
        if isinstance(p, ResEncPreset):
            enc = _resenc_encoder_config(preset, in_channels, img_size, None, spacing, encoder_overrides).encoder
            return NetworkConfig("resenc", preset, {"out_channels": out_channels}, enc)
        return _dynunet_config(preset, in_channels, out_channels, img_size, spacing)
    if isinstance(p, PrimusPreset) and p.decoder == "patch":  # with the UNETR decoder: the UNETR path below
        if feature_size is not None or not skip_norm or deep_supervision:
            raise ConfigError(
                f"feature_size / skip_norm / deep_supervision are UNETR / nnFormer options; preset {preset!r} builds a "
                f"Primus (patch decoder; with the UNETR decoder: {_unetr_primus()})"
            )
        enc = _encoder_config(preset, in_channels, img_size, patch_size, encoder_overrides).encoder
        return NetworkConfig("primus", preset, {"out_channels": out_channels}, enc)
    if isinstance(p, NnFormerPreset):
        if feature_size is not None or not skip_norm:
            raise ConfigError(f"feature_size / skip_norm are UNETR options; preset {preset!r} builds an nnFormer")
        return _nnformer_config(
            preset, in_channels, out_channels, img_size, patch_size, deep_supervision, None, encoder_overrides
        )
    if deep_supervision:
        raise ConfigError(f"deep_supervision is an nnFormer option; preset {preset!r} builds a UNETR")
    return _unetr_config(
        preset, in_channels, out_channels, img_size, patch_size, feature_size, "instance", skip_norm, encoder_overrides
    )


def build_segmenter(*args: Any, **kwargs: Any) -> Built:
    """The segmentation network of any preset, with its config; the arguments are :func:`segmenter_config`'s:
    UNETR for a ViT preset, nnFormer for an nnFormer one, a residual-encoder U-Net for a ResEnc one, a Primus (EVA
    ViT + patch decoder, or UNETR's decoder where the preset says so) for a Primus one, DynUNet for the CNN peer
    (the CNNs are planned for ``img_size`` at ``spacing``, which only they use). The options of the other families
    must stay at their defaults (``feature_size`` / ``skip_norm`` are UNETR's, ``deep_supervision`` nnFormer's)."""
    return _built(segmenter_config(*args, **kwargs))


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a family fine-tunes from pretrained weights: the peak learning rate times ``lr_scale`` (after the usual
    linear warm-up) and layer-wise decay ``layer_decay`` over the encoder (1: none)."""

    lr_scale: float
    layer_decay: float


# Transformers: the MAE fine-tuning recipe (BEiT layer decay at the scratch LR). CNNs: no layer decay, and the
# scratch peak LR. nnU-Net's PretrainedTrainer (the S3D recipe, Wald et al., CVPR 2025) lowers it 10x, but that is
# for SGD at 1e-2; with volmae's AdamW at 5e-4 and a 400-step budget, an S3D-pretrained resenc-tiny validated (on
# training cases of MSD hippocampus fold 0, 8 labeled) at 0.845 with the scratch LR, 0.813 at 0.3x, and at 0.1x its
# loss stalled (docs/results.md). --pretrained-lr-scale sets another factor.
RECIPES = {
    "vit": FinetuneRecipe(1.0, 0.75),
    "nnformer": FinetuneRecipe(1.0, 0.75),
    "resenc": FinetuneRecipe(1.0, 1.0),
    "primus": FinetuneRecipe(1.0, 0.75),
    "cnn": FinetuneRecipe(1.0, 1.0),
}


def preset_as_dict(name: str) -> dict[str, Any]:
    return asdict(get_preset(name))


# What to cite for a network and its pretraining (stored in a model file's provenance).
CITATIONS = {
    "vit": "Hatamizadeh et al., UNETR: Transformers for 3D Medical Image Segmentation, WACV 2022",
    "nnformer": "Zhou et al., nnFormer: Volumetric Medical Image Segmentation via a 3D Transformer, IEEE TIP 2023",
    "cnn": "Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical image "
    "segmentation, Nature Methods 2021",
    "resenc": "Isensee et al., nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation, "
    "MICCAI 2024",
    "mae": "Zhou et al., Self Pre-training with Masked Autoencoders for Medical Image Classification and "
    "Segmentation, ISBI 2023 (arXiv 2203.05573)",
    "s3d": "Wald et al., Revisiting MAE pre-training for 3D medical image segmentation, CVPR 2025",
    "primus": "Wald, Roy, Isensee et al., Primus: Enforcing Attention Usage for 3D Medical Image Segmentation, "
    "arXiv 2503.01835 (2025)",
    "primus-mae": "He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022; Wald et al., An OpenMind "
    "for 3D medical vision self-supervised learning, ICCV 2025",
}


def citations(config: NetworkConfig, pretrained: bool | str | None = None) -> tuple[str, ...]:
    """The papers behind a network (and its masked pretraining, for a pretraining model or ``pretrained``)."""
    out = [CITATIONS[config.family]]
    if pretrained or config.role == "pretraining":
        out.append(CITATIONS[{"resenc": "s3d", "primus": "primus-mae"}.get(config.family, "mae")])
    return tuple(out)
