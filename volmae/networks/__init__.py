"""Networks: the 3D ViT encoder, the MAE wrapper, UNETR, weight loading and the preset registry."""

from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.patching import patchify, unpatchify
from volmae.networks.registry import PRESETS, build_encoder, build_from_config, build_mae, build_unetr
from volmae.networks.unetr import UNETR
from volmae.networks.vit import ViTEncoder
from volmae.networks.weights import LoadReport, load_encoder_weights

__all__ = [
    "ViTEncoder",
    "MaskedAutoencoder",
    "UNETR",
    "PRESETS",
    "build_encoder",
    "build_mae",
    "build_unetr",
    "build_from_config",
    "load_encoder_weights",
    "LoadReport",
    "patchify",
    "unpatchify",
]
