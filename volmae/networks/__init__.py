"""Networks: the 3D ViT, nnFormer and residual-encoder CNN encoders, their pretraining models (MAE, masked-volume,
masked-UNETR, S3D), the UNETR, nnFormer and ResEnc U-Net segmentation networks, the DynUNet peer, weight moving
between them and the preset registry. Tensors in memory only:
model files are :mod:`volmae.artifact`'s."""

from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.masked_volume import MaskedVolumeModel
from volmae.networks.nnformer import NnFormer
from volmae.networks.nnformer_encoder import NnFormerEncoder
from volmae.networks.patching import patchify, unpatchify
from volmae.networks.registry import (
    PRESETS,
    Built,
    NetworkConfig,
    build_encoder,
    build_mae,
    build_network,
    build_nnformer,
    build_resenc,
    build_segmenter,
    build_unetr,
    segmenter_config,
)
from volmae.networks.resenc import ResEncEncoder, ResEncUNet
from volmae.networks.s3d import SparseMaskedUNet
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
    "ResEncEncoder",
    "ResEncUNet",
    "SparseMaskedUNet",
    "PRESETS",
    "Built",
    "NetworkConfig",
    "build_network",
    "build_encoder",
    "build_mae",
    "build_unetr",
    "build_nnformer",
    "build_resenc",
    "build_segmenter",
    "segmenter_config",
    "load_encoder_weights",
    "LoadReport",
    "patchify",
    "unpatchify",
]
