"""Named model presets, shared by the Python API, the console scripts (``--preset``) and bundle ``_target_`` s.

A preset fixes the encoder's width/depth/heads/patch and the MAE decoder; sizes that depend on the task (input
channels, ROI, classes) are arguments. Every builder returns a model whose full constructor arguments are in
``model.volmae_config`` so that a checkpoint can rebuild its network without the original command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from volmae.errors import ConfigError
from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.unetr import UNETR
from volmae.networks.vit import ViTEncoder

__all__ = [
    "Preset",
    "PRESETS",
    "get_preset",
    "build_encoder",
    "build_mae",
    "build_unetr",
    "build_from_config",
    "list_presets",
]


@dataclass(frozen=True)
class Preset:
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


PRESETS: dict[str, Preset] = {
    # CPU-sized: the hippocampus demo on 2 cores.
    "vit-tiny": Preset(192, 12, 3, 768, 8, 192, 4, 6, 16, "ViT-Ti (192 wide, 12 blocks), patch 8; CPU demo size"),
    "vit-small": Preset(384, 12, 6, 1536, 16, 384, 8, 12, 16, "ViT-S (384 wide, 12 blocks), patch 16"),
    # SelfMedMAE / UNETR paper configuration.
    "vit-base": Preset(768, 12, 12, 3072, 16, 384, 8, 12, 16, "ViT-B/16 with the SelfMedMAE decoder (384 x 8)"),
}


def list_presets() -> str:
    return "\n".join(f"{k:10s} {v.description}" for k, v in PRESETS.items())


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_encoder(
    preset: str = "vit-base",
    in_channels: int = 1,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    **overrides: Any,
) -> ViTEncoder:
    """A :class:`ViTEncoder` from a preset; ``overrides`` replace any ``ViTEncoder`` argument."""
    p = get_preset(preset)
    kwargs: dict[str, Any] = dict(
        in_channels=in_channels,
        img_size=img_size,
        patch_size=p.patch_size if patch_size is None else patch_size,
        hidden_size=p.hidden_size,
        mlp_dim=p.mlp_dim,
        num_layers=p.num_layers,
        num_heads=p.num_heads,
    )
    kwargs.update(overrides)
    enc = ViTEncoder(**kwargs)
    enc.volmae_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    enc.volmae_config.update(img_size=list(enc.img_size), patch_size=list(enc.patch_size))
    return enc


def build_mae(
    preset: str = "vit-base",
    in_channels: int = 1,
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
    mask_ratio: float = 0.75,
    norm_pix_loss: bool = True,
    decoder_dim: int | None = None,
    decoder_depth: int | None = None,
    decoder_heads: int | None = None,
    **encoder_overrides: Any,
) -> MaskedAutoencoder:
    """An MAE whose encoder and decoder come from ``preset`` (decoder sizes overridable)."""
    p = get_preset(preset)
    enc = build_encoder(preset, in_channels, img_size, patch_size, **encoder_overrides)
    mae_kwargs = dict(
        decoder_dim=p.decoder_dim if decoder_dim is None else decoder_dim,
        decoder_depth=p.decoder_depth if decoder_depth is None else decoder_depth,
        decoder_heads=p.decoder_heads if decoder_heads is None else decoder_heads,
        mask_ratio=mask_ratio,
        norm_pix_loss=norm_pix_loss,
    )
    model = MaskedAutoencoder(enc, **mae_kwargs)
    model.volmae_config = {"kind": "mae", "preset": preset, "encoder": enc.volmae_config, "mae": mae_kwargs}
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
    """A UNETR on a preset encoder; with ``pretrained`` (a volmae/MONAI checkpoint path) the encoder is loaded
    from it and the load report is kept in ``model.load_report``."""
    p = get_preset(preset)
    enc = build_encoder(preset, in_channels, img_size, patch_size, **encoder_overrides)
    unetr_kwargs = dict(
        out_channels=out_channels,
        feature_size=p.feature_size if feature_size is None else feature_size,
        norm_name=norm_name,
        skip_norm=skip_norm,
    )
    model = UNETR(enc, **unetr_kwargs)
    model.volmae_config = {"kind": "unetr", "preset": preset, "encoder": enc.volmae_config, "unetr": unetr_kwargs}
    model.load_report = None
    if pretrained:
        from volmae.networks.weights import load_encoder_weights

        model.load_report = load_encoder_weights(enc, pretrained)
    return model


def preset_as_dict(name: str) -> dict[str, Any]:
    return asdict(get_preset(name))


def build_from_config(config: dict[str, Any]) -> MaskedAutoencoder | UNETR:
    """Rebuild a network from the ``volmae_config`` stored in a checkpoint (no preset lookup needed)."""
    kind = config.get("kind")
    if kind not in ("mae", "unetr") or "encoder" not in config:
        raise ConfigError(f"checkpoint config describes no volmae network (kind={kind!r})")
    enc = ViTEncoder(**config["encoder"])
    enc.volmae_config = dict(config["encoder"])
    model: MaskedAutoencoder | UNETR
    model = MaskedAutoencoder(enc, **config["mae"]) if kind == "mae" else UNETR(enc, **config["unetr"])
    model.volmae_config = config
    return model
