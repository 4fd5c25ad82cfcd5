"""Starting a network from pretrained weights in a file: what ``--pretrained`` (fine-tuning) and ``init_from``
(continued pretraining) read.

Sources: a volmae model file (a pretraining or segmentation model, this format or volmae 0.1.0's), or a plain state
dict of a volmae network or encoder, or MONAI ``UNETR`` / ``ViT`` weights. From a volmae file the encoder's stored
arguments say its position grid and attention windows, so a changed ROI resamples them; a masked-unetr pretraining
model also hands over its UNETR decoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from volmae.artifact.model import read_weights
from volmae.errors import CheckpointError
from volmae.networks.registry import NetworkConfig
from volmae.networks.weights import LoadReport, load_encoder_weights, load_unetr_decoder_weights

__all__ = ["load_pretrained"]


def load_pretrained(network: torch.nn.Module, config: NetworkConfig, source: str | Path) -> LoadReport:
    """Load the encoder of ``source`` into the segmentation ``network`` (built from ``config``) and, from a
    masked-unetr pretraining model into a UNETR, its decoder too; returns what loaded (never raises on a partial
    match: the report says it), or a :class:`CheckpointError` when ``source`` holds no encoder of this family."""
    encoder = getattr(network, "encoder", None)
    if encoder is None:
        raise CheckpointError(f"pretrained={source}: a {config.kind} network has no encoder to load into")
    weights, model = read_weights(source)
    source_config = model.network if model is not None else None
    if source_config is not None and source_config.family != config.family:
        raise CheckpointError(
            f"{source}: holds a {source_config.family} encoder ({source_config.kind}) but this network has a "
            f"{config.family} encoder; pick a {source_config.family} preset, or pretrain a {config.family} one"
        )
    report = load_encoder_weights(encoder, weights, source_config.encoder if source_config else None)
    if source_config is not None and source_config.kind == "masked-unetr" and config.kind == "unetr":
        load_unetr_decoder_weights(network, weights, report)
    return report
