"""The network config: what rebuilds a volmae network exactly (its kind, preset and every constructor argument), and
:func:`build_network`, which builds it. Builders (:mod:`volmae.networks.registry`) return a network with its config;
a model file stores the config (:mod:`volmae.artifact`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

from volmae.errors import ConfigError, VolmaeError
from volmae.networks.dynunet import build_dynunet_network
from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.masked_unetr import MaskedUNETR
from volmae.networks.masked_volume import MaskedVolumeModel
from volmae.networks.nnformer import NnFormer
from volmae.networks.nnformer_encoder import NnFormerEncoder
from volmae.networks.primus import PrimusEncoder, PrimusSegmenter
from volmae.networks.primus_mae import PrimusMAE
from volmae.networks.resenc import ResEncEncoder, ResEncUNet
from volmae.networks.s3d import SparseMaskedUNet
from volmae.networks.unetr import UNETR
from volmae.networks.vit import ViTEncoder
from volmae.utils.io import plain

__all__ = [
    "NetworkConfig",
    "Built",
    "build_network",
    "named",
    "SEGMENTATION_KINDS",
    "PRETRAINING_KINDS",
    "ENCODER_KINDS",
    "WHOLE_NETWORK_TWIN",
    "HEADS",
]

# Network ``kind`` s: a segmentation network, a pretraining model, or an encoder alone (a feature extractor).
SEGMENTATION_KINDS = ("unetr", "nnformer", "resenc", "primus", "primus-unetr", "dynunet")
PRETRAINING_KINDS = ("mae", "masked-volume", "masked-unetr", "s3d", "primus-mae", "primus-masked-unetr")
ENCODER_KINDS = ("vit-encoder", "nnformer-encoder", "resenc-encoder", "primus-encoder")

# kind -> (encoder class, network class, key of the network's own arguments in the stored config, family)
_NETWORKS: dict[str, tuple[type | None, type | None, str, str]] = {
    "unetr": (ViTEncoder, UNETR, "unetr", "vit"),
    "nnformer": (NnFormerEncoder, NnFormer, "nnformer", "nnformer"),
    "resenc": (ResEncEncoder, ResEncUNet, "resenc", "resenc"),
    "primus": (PrimusEncoder, PrimusSegmenter, "primus", "primus"),
    "primus-unetr": (PrimusEncoder, UNETR, "unetr", "primus"),
    "dynunet": (None, None, "dynunet", "cnn"),
    "mae": (ViTEncoder, MaskedAutoencoder, "mae", "vit"),
    "masked-volume": (NnFormerEncoder, MaskedVolumeModel, "masked_volume", "nnformer"),
    "masked-unetr": (ViTEncoder, MaskedUNETR, "masked_unetr", "vit"),
    "s3d": (ResEncEncoder, SparseMaskedUNet, "s3d", "resenc"),
    "primus-mae": (PrimusEncoder, PrimusMAE, "primus_mae", "primus"),
    "primus-masked-unetr": (PrimusEncoder, MaskedUNETR, "masked_unetr", "primus"),
    "vit-encoder": (ViTEncoder, None, "", "vit"),
    "nnformer-encoder": (NnFormerEncoder, None, "", "nnformer"),
    "resenc-encoder": (ResEncEncoder, None, "", "resenc"),
    "primus-encoder": (PrimusEncoder, None, "", "primus"),
}

# The segmentation network whose weights (encoder and decoder, all but the head) a pretraining kind holds under the
# same names; fine-tuning transfers them whole (volmae.artifact.load_pretrained).
WHOLE_NETWORK_TWIN = {
    "masked-unetr": "unetr",
    "s3d": "resenc",
    "primus-mae": "primus",
    "primus-masked-unetr": "primus-unetr",
}
# State-dict prefixes of each segmentation network's output head (never transferred: the classes differ).
HEADS = {
    "unetr": ("head.",),
    "nnformer": ("head.", "aux_heads."),
    "resenc": ("head.",),
    "primus": ("head.",),
    "primus-unetr": ("head.",),
    "dynunet": ("output_block.", "deep_supervision_heads.", "skip_layers.deep_supervision_heads."),
}


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that rebuilds a network exactly: its ``kind``, the ``preset`` it came from, the encoder's
    constructor arguments (``encoder``; ``None`` for the CNN, which has no separate encoder) and the network's own
    (``arguments``: the UNETR / nnFormer decoder, the MAE decoder and masking, the DynUNet plan).

    :meth:`to_dict` is the stored form (``{"kind", "preset", "encoder", "<kind>": arguments}``, the layout every
    volmae model file has carried); :meth:`from_dict` reads it back, checking that it describes a network."""

    kind: str
    preset: str
    arguments: dict = field(default_factory=dict)
    encoder: dict | None = None
    window: tuple[int, ...] = ()  # the input window (the ROI); a ViT / nnFormer's is its encoder's img_size

    def __post_init__(self) -> None:
        if self.kind not in _NETWORKS:
            raise ConfigError(f"network kind {self.kind!r}: expected one of {', '.join(_NETWORKS)}")
        enc_cls = _NETWORKS[self.kind][0]
        if enc_cls is not None and not isinstance(self.encoder, Mapping):
            raise ConfigError(f"a {self.kind} network config needs its encoder's arguments")
        if not self.window:
            size = (self.encoder or {}).get("img_size")
            if size is None:
                raise ConfigError(f"a {self.kind} network config needs its window (img_size)")
            object.__setattr__(self, "window", tuple(int(s) for s in size))

    @property
    def family(self) -> str:
        """``vit``, ``nnformer``, ``resenc``, ``primus`` or ``cnn`` (the DynUNet peer): weights move between networks
        of one family only."""
        return _NETWORKS[self.kind][3]

    @property
    def role(self) -> str:
        """``segmentation``, ``pretraining`` or ``encoder``."""
        if self.kind in SEGMENTATION_KINDS:
            return "segmentation"
        return "pretraining" if self.kind in PRETRAINING_KINDS else "encoder"

    @property
    def out_channels(self) -> int | None:
        """Output channels of a segmentation network (``None`` for other roles)."""
        return int(self.arguments["out_channels"]) if self.role == "segmentation" else None

    @property
    def in_channels(self) -> int:
        return int((self.encoder or self.arguments)["in_channels"])

    def with_window(self, roi_size: Sequence[int]) -> NetworkConfig:
        """The same network for another input window (a ViT's token grid follows it; the weights still load, see
        :func:`volmae.networks.weights.load_encoder_weights`)."""
        roi = tuple(int(s) for s in roi_size)
        if self.encoder is None:
            return replace(self, window=roi)
        return replace(self, encoder={**self.encoder, "img_size": list(roi)}, window=roi)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "preset": self.preset}
        if self.encoder is not None:
            out["encoder"] = plain(self.encoder)
        else:
            out["img_size"] = list(self.window)
        key = _NETWORKS[self.kind][2]
        if key:
            out[key] = plain(self.arguments)
        return out

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> NetworkConfig:
        if not isinstance(config, Mapping) or config.get("kind") not in _NETWORKS:
            kind = config.get("kind") if isinstance(config, Mapping) else None
            raise ConfigError(f"the stored network config describes no volmae network (kind={kind!r})")
        kind = config["kind"]
        key = _NETWORKS[kind][2]
        arguments = dict(config.get(key) or {}) if key else {}
        encoder = dict(config["encoder"]) if isinstance(config.get("encoder"), Mapping) else None
        window = tuple(int(s) for s in config.get("img_size", ()))
        return cls(kind, str(config.get("preset", "")), arguments, encoder, window)

    def build(self) -> torch.nn.Module:
        """A fresh network of this config (see :func:`build_network`)."""
        return build_network(self)


class Built(NamedTuple):
    """What a builder returns: the network and the config that rebuilds it."""

    model: torch.nn.Module
    config: NetworkConfig


def build_network(config: NetworkConfig | Mapping[str, Any]) -> torch.nn.Module:
    """Build the network a :class:`NetworkConfig` (or its stored dict) describes, freshly initialised. A size the
    network refuses becomes a :class:`ConfigError` naming it."""
    cfg = config if isinstance(config, NetworkConfig) else NetworkConfig.from_dict(config)
    enc_cls, net_cls, _, _ = _NETWORKS[cfg.kind]
    with named(cfg.preset or cfg.kind):
        if cfg.kind == "dynunet":
            return build_dynunet_network(**cfg.arguments)
        enc = enc_cls(**cfg.encoder)  # type: ignore[misc]
        return enc if net_cls is None else net_cls(enc, **cfg.arguments)


@contextlib.contextmanager
def named(preset: str) -> Iterator[None]:
    """A size or argument the network refuses (e.g. an ROI its patches / windows do not tile) becomes a
    :class:`ConfigError` naming the preset, so the console scripts print one line instead of a traceback."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if isinstance(e, VolmaeError):
            raise
        raise ConfigError(f"preset {preset!r}: {e}") from None
