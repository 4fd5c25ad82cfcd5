"""Starting a network from pretrained weights in a file: what ``--pretrained`` (fine-tuning) and ``init_from``
(continued pretraining) read.

Sources: a volmae model file (a pretraining or segmentation model, this format or volmae 0.1.0's), or a plain state
dict of a volmae network or encoder, or MONAI ``UNETR`` / ``ViT`` weights, or (for a Primus) the weights of
dynamic-network-architectures' ``Primus`` (nnU-Net's Primus trainers, nnssl) or of a timm ``Eva`` / EVA-02 ViT, whose
layout is recognised and converted (:func:`~volmae.networks.weights.convert_foreign_primus`; the report says what
was left out). From a volmae file the encoder's stored arguments say its position grid and attention windows, so a
changed ROI resamples them; a plain state dict's grid is guessed from its token count.

Two transfers (``transfer``):

* ``"encoder"``: the encoder only; the decoder and head start fresh (what an MAE's ViT offers).
* ``"whole"``: encoder **and** decoder, the head re-initialised for the task's classes (Wald et al., CVPR 2025:
  whole-network transfer is what makes masked pretraining pay). Sources that carry this network's decoder: a
  masked-unetr model for a UNETR, an S3D model for a ResEnc U-Net, and a segmentation model of the same kind
  (another task's classes, another channel count: the image-reading convolutions are adapted).
* ``"auto"`` (default): whole where the source carries the decoder, the encoder otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from volmae.artifact.model import read_weights
from volmae.errors import CheckpointError, ConfigError
from volmae.networks.config import HEADS, WHOLE_NETWORK_TWIN
from volmae.networks.registry import PRESETS, NetworkConfig
from volmae.networks.weights import (
    TIMM_EVA,
    ForeignPrimus,
    LoadReport,
    convert_foreign_primus,
    load_decoder_weights,
    load_encoder_weights,
)

__all__ = ["load_pretrained", "TRANSFERS", "decoder_source"]

TRANSFERS = ("auto", "encoder", "whole")


def decoder_source(source: NetworkConfig | None, config: NetworkConfig) -> bool:
    """Whether a model of ``source`` carries the decoder of a ``config`` network under its names."""
    if source is None:
        return False
    return source.kind == config.kind or WHOLE_NETWORK_TWIN.get(source.kind) == config.kind


def load_pretrained(
    network: torch.nn.Module,
    config: NetworkConfig,
    source: str | Path,
    transfer: str = "auto",
    spacing: tuple[float, ...] | None = None,
) -> LoadReport:
    """Load ``source``'s weights into the segmentation ``network`` (built from ``config``) by ``transfer`` (see the
    module docstring); returns what loaded (never raises on a partial match: the report says it). Raises
    :class:`CheckpointError` when ``source`` holds no weights of this family, or ``transfer="whole"`` from a source
    without this network's decoder. ``spacing``: this run's voxel spacing (mm); a source model trained at another
    one, or for another window, gets a note in the report (features learned at another scale: Wald et al. measured
    up to -14 Dice for such a mismatch)."""
    if transfer not in TRANSFERS:
        raise ConfigError(f"transfer={transfer!r}: expected one of {', '.join(TRANSFERS)}")
    weights, model = read_weights(source)
    source_config = model.network if model is not None else None
    foreign = convert_foreign_primus(weights) if model is None else None
    if foreign is not None:
        _check_foreign(foreign, network, config, source)
        weights = foreign.state
    if source_config is not None and source_config.family != config.family:
        raise CheckpointError(
            f"{source}: holds a {source_config.family} network ({source_config.kind}) but this is a {config.family} "
            f"network ({config.kind}); pick a {source_config.family} preset, or pretrain a {config.family} one"
        )
    whole = decoder_source(source_config, config)
    if transfer == "whole" and not whole:
        what = source_config.kind if source_config else "a plain state dict"
        raise CheckpointError(
            f"transfer=whole: {source} ({what}) carries no {config.kind} decoder; whole-network transfer takes "
            f"{_whole_sources(config)}; use transfer=encoder for its encoder"
        )
    encoder = getattr(network, "encoder", None)
    report = LoadReport()
    if encoder is not None:
        report = load_encoder_weights(encoder, weights, source_config.encoder if source_config else None)
    elif not whole:
        raise CheckpointError(f"pretrained={source}: a {config.kind} network has no encoder to load into")
    if whole and transfer != "encoder":
        channels = (source_config.in_channels, config.in_channels)  # type: ignore[union-attr]
        load_decoder_weights(network, weights, report, HEADS[config.kind], channels)
    if model is not None:
        report.notes += _data_differences(model, config, spacing)
    if foreign is not None:
        facts = [f"converted from the {foreign.layout} layout", *foreign.notes, *_foreign_fit(foreign, encoder)]
        report.notes[:0] = facts
        report.unexpected += foreign.left_out
    return report


def _primus_presets(width: int) -> list[str]:
    """The Primus presets of embedding width ``width``, described."""
    return [
        f"{name} ({p.hidden_size} wide, {p.num_layers} blocks, {p.num_heads} heads)"
        for name, p in PRESETS.items()
        if p.family == "primus" and getattr(p, "hidden_size", None) == width
    ]


def _check_foreign(foreign: ForeignPrimus, network: torch.nn.Module, config: NetworkConfig, source) -> None:
    """A converted foreign Primus must go into a Primus of its width: nothing of it would load otherwise."""
    width = foreign.width
    fits = _primus_presets(width) if width else []
    if fits:
        hint = f"--preset {fits[0]}"
    else:
        hint = f"a Primus {width} wide (no volmae preset is)" if width else "a primus preset"
    what = f"{foreign.layout} weights ({width} wide, {foreign.depth} blocks)"
    if config.family != "primus":
        raise CheckpointError(
            f"{source}: holds {what} but this is a {config.family} network ({config.kind}); fine-tune them with {hint}"
        )
    ours = getattr(getattr(network, "encoder", None), "hidden_size", None)
    if width is not None and ours is not None and width != ours:
        raise CheckpointError(
            f"{source}: holds {what}, but this network's encoder ({config.preset}) is {ours} wide; every tensor would "
            f"mismatch: fine-tune with {hint}"
        )


def _foreign_fit(foreign: ForeignPrimus, encoder) -> list[str]:
    """Notes on what the weights cannot say or do not cover of this encoder: depth, head count."""

    def blocks(a: int, b: int, one: str, more: str) -> str:
        return f"block {a} {one}" if a == b else f"blocks {a} .. {b} {more}"

    notes = []
    depth, ours = foreign.depth, encoder.num_layers
    if depth > ours:
        extra = blocks(ours, depth - 1, "is unused", "are unused")
        notes.append(f"the weights have {depth} blocks, this encoder {ours}: {extra}")
    elif 0 < depth < ours:
        extra = blocks(depth, ours - 1, "starts fresh", "start fresh")
        notes.append(f"the weights have {depth} blocks, this encoder {ours}: {extra}")
    if foreign.layout == TIMM_EVA:
        theirs = "timm's EVA-02 models have heads 64 wide, which volmae's 3D RoPE cannot split (rope=False can)"
    else:
        theirs = "DNA's Primus-S / B / M / L have 6 / 12 / 12 / 16"
    notes.append(
        f"the weights do not record their head count: this encoder splits {encoder.hidden_size} into "
        f"{encoder.num_heads} heads of {encoder.hidden_size // encoder.num_heads}, which must be the source's "
        f"({theirs})"
    )
    return notes


def _data_differences(model, config: NetworkConfig, spacing: tuple[float, ...] | None) -> list[str]:
    """What differs between the data the source model was trained on and this run's: spacing and window."""
    notes = []
    theirs = model.task.preprocessing.pixdim
    if spacing is not None and theirs is not None and tuple(map(float, theirs)) != tuple(map(float, spacing)):
        fmt = " x ".join
        notes.append(
            f"pretrained at {fmt(f'{v:g}' for v in theirs)} mm, fine-tuned at {fmt(f'{v:g}' for v in spacing)} mm: "
            "its features are of another scale (pretrain at the target spacing where you can)"
        )
    if tuple(model.network.window) != tuple(config.window):
        notes.append(
            f"pretrained on {list(model.network.window)} windows, fine-tuned on {list(config.window)}"
            + (" (the CNN's plan follows the window: stages that differ are listed below)" if config.encoder and
               "strides" in config.encoder else "")
        )  # fmt: skip
    return notes


def _whole_sources(config: NetworkConfig) -> str:
    twins = [k for k, v in WHOLE_NETWORK_TWIN.items() if v == config.kind]
    return " or ".join([f"a {k} pretraining model" for k in twins] + [f"a {config.kind} segmentation model"])
