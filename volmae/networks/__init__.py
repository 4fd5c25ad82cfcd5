"""Networks: the 3D ViT and nnFormer encoders, their pretraining models (MAE, masked-volume), UNETR and nnFormer
segmentation networks, weight loading and the preset registry."""

from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.masked_volume import MaskedVolumeModel
from volmae.networks.nnformer import NnFormer
from volmae.networks.nnformer_encoder import NnFormerEncoder
from volmae.networks.patching import patchify, unpatchify
from volmae.networks.registry import (
    PRESETS,
    build_encoder,
    build_from_config,
    build_mae,
    build_nnformer,
    build_segmenter,
    build_unetr,
)
from volmae.networks.unetr import UNETR
from volmae.networks.vit import ViTEncoder
from volmae.networks.weights import LoadReport, load_encoder_weights

__all__ = [
    "ViTEncoder",
    "MaskedAutoencoder",
    "UNETR",
    "NnFormerEncoder",
    "NnFormer",
    "MaskedVolumeModel",
    "build_nnformer",
    "build_segmenter",
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
