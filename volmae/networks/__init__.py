"""Networks: the 3D ViT, nnFormer, residual-encoder CNN and Primus-style EVA ViT encoders, their pretraining models
(MAE, masked-volume, masked-UNETR, S3D, the whole-network Primus MAE), the UNETR, nnFormer, ResEnc U-Net and Primus
segmentation networks, the DynUNet peer, weight moving between them and the preset registry. Tensors in memory only:
model files are :mod:`volmae.artifact`'s."""

from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.masked_volume import MaskedVolumeModel
from volmae.networks.nnformer import NnFormer
from volmae.networks.nnformer_encoder import NnFormerEncoder
from volmae.networks.patching import patchify, unpatchify
from volmae.networks.primus import PrimusEncoder, PrimusSegmenter
from volmae.networks.primus_mae import PrimusMAE
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
    "PrimusEncoder",
    "PrimusSegmenter",
    "PrimusMAE",
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
