"""Moving pretrained encoder weights between networks: key filters, position-embedding resampling, a load report.

Everything here works on tensors in memory; reading model files is :mod:`volmae.artifact`'s. States understood by
:func:`encoder_state_from`: the weights of a volmae network or encoder (optionally under ``model`` /
``state_dict`` / ``net``), and MONAI ``UNETR`` / ``ViT`` state dicts (``vit.*`` keys), optionally wrapped by DDP
(``module.*``). Two encoder families exist, ``vit`` and ``nnformer``; weights of one never load into the other (a
clear error says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from volmae.errors import CheckpointError
from volmae.networks.nnformer_encoder import NnFormerEncoder, stage_windows
from volmae.networks.vit import ViTEncoder

__all__ = [
    "LoadReport",
    "load_state_exactly",
    "state_mismatch",
    "model_state",
    "encoder_state_from",
    "unwrapped_state",
    "resample_pos_embed",
    "load_encoder_weights",
    "load_decoder_weights",
    "adapt_input_channels",
    "POS_EMBED_KEY",
    "monai_unetr_to_volmae",
    "volmae_unetr_to_monai",
]

POS_EMBED_KEY = "patch_embedding.position_embeddings"
PATCH_WEIGHT_KEY = "patch_embedding.patch_embeddings.weight"
# Prefixes under which an encoder lives in the networks we know, tried in order.
ENCODER_PREFIXES = ("encoder.", "vit.", "")
# Per encoder family: the roots of its state-dict keys, the root that proves it is there, the weights of the
# convolutions that read the image (Primus: the patch tokenizer's, or the conv tokenizer's first).
FAMILIES = {
    "vit": (("patch_embedding.", "blocks.", "norm."), "patch_embedding.", (PATCH_WEIGHT_KEY,)),
    "nnformer": (("embed.", "downs.", "stages.", "norms."), "stages.", ("embed.0.0.weight",)),
    "resenc": (("stem.", "stages."), "stages.", ("stem.0.conv.weight",)),
    "primus": (
        ("patch_embed.", "pos_embed", "reg_token", "blocks.", "norm."),
        "patch_embed.",
        ("patch_embed.proj.weight", "patch_embed.stem.0.0.weight"),
    ),
}
PRIMUS_POS_EMBED_KEY = "pos_embed"
# A preset to name when a checkpoint holds another family's encoder.
_EXAMPLE_PRESET = {"vit": "vit-tiny", "nnformer": "nnformer-tiny", "resenc": "resenc-tiny", "primus": "primus-tiny"}
BIAS_TABLE = "attn.relative_position_bias_table"


@dataclass
class LoadReport:
    """What :func:`load_encoder_weights` did with every key."""

    loaded: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    regenerated: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    decoder_loaded: list[str] = field(default_factory=list)  # decoder keys (whole-network transfer)
    head: list[str] = field(default_factory=list)  # the output head's keys, left at their fresh initialisation
    notes: list[str] = field(default_factory=list)  # what differs between the source's data and this run's

    @property
    def ok(self) -> bool:
        return not self.missing and not self.shape_mismatch

    def summary(self) -> str:
        lines = [
            f"encoder weights: {len(self.loaded)} tensors loaded, {len(self.resampled)} resampled, "
            f"{len(self.regenerated)} regenerated, {len(self.adapted)} channel-adapted, "
            f"{len(self.shape_mismatch)} shape mismatches, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unused"
        ]
        if self.decoder_loaded:
            lines.append(
                f"decoder weights (whole-network transfer): {len(self.decoder_loaded)} tensors loaded; the output "
                f"head ({len(self.head)} tensors) is not: it starts fresh for this task's classes"
            )
        lines += [f"  NOTE       {n}" for n in self.notes]
        for k in self.resampled:
            lines.append(f"  resampled  {k} (position grid or attention window changed with the ROI)")
        for k in self.regenerated:
            lines.append(f"  regenerated {k} (fixed sin-cos embedding rebuilt for the new grid)")
        for k in self.adapted:
            lines.append(f"  adapted    {k} (input channels changed)")
        for k, (a, b) in self.shape_mismatch.items():
            lines.append(f"  NOT LOADED {k}: checkpoint {a} vs model {b}")
        for k in self.missing:
            lines.append(f"  missing    {k} (kept its fresh initialisation)")
        if self.unexpected:
            shown = ", ".join(self.unexpected[:8]) + (" ..." if len(self.unexpected) > 8 else "")
            lines.append(f"  unused checkpoint keys: {shown}")
        return "\n".join(lines)


def state_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor], limit: int = 3) -> str:
    """What keeps ``state`` from loading into ``model``, by key: up to ``limit`` missing, unexpected and
    shape-mismatched keys each (``""`` when it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape (file vs network)", shapes)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def load_state_exactly(model: torch.nn.Module, state: Mapping[str, torch.Tensor], message: str) -> None:
    """``model.load_state_dict(state)`` (strict); a mismatch raises ``CheckpointError(message.format(why=...))``
    with the differing keys (:func:`state_mismatch`) as ``why``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        why = state_mismatch(model, state) or str(e).splitlines()[0]
        raise CheckpointError(message.format(why=why)) from None


def model_state(ckpt: Mapping) -> Mapping[str, torch.Tensor]:
    """The network state inside a checkpoint (under ``model`` / ``state_dict`` / ``net``), or the mapping itself."""
    for key in ("model", "state_dict", "net"):
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    return ckpt


def unwrapped_state(ckpt: Mapping) -> dict[str, torch.Tensor]:
    """:func:`model_state`'s tensors under their own names (DDP's ``module.`` prefix removed)."""
    return {k.removeprefix("module."): v for k, v in model_state(ckpt).items() if isinstance(v, torch.Tensor)}


def encoder_state_from(ckpt: Mapping, family: str = "vit") -> dict[str, torch.Tensor]:
    """Filter a checkpoint (or state dict) down to the keys of a ``family`` encoder, renamed to its own names."""
    state = unwrapped_state(ckpt)

    def find(fam: str) -> dict[str, torch.Tensor]:
        roots, marker, _ = FAMILIES[fam]
        for prefix in ENCODER_PREFIXES:
            found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            found = {k: v for k, v in found.items() if k.startswith(roots)}
            if any(k.startswith(marker) for k in found):
                return found
        return {}

    found = find(family)
    if found:
        return found
    for other in FAMILIES:
        if other != family and find(other):
            raise CheckpointError(
                f"the checkpoint holds a {other} encoder but this network has a {family} encoder; use a {other} "
                f"preset with it, or pretrain a {family} encoder (e.g. volmae-pretrain --preset "
                f"{_EXAMPLE_PRESET[family]})"
            )
    raise CheckpointError(
        f"no {family} encoder weights found in the checkpoint (looked for keys under 'encoder.', 'vit.' or bare "
        f"{' / '.join(repr(r) for r in FAMILIES[family][0])}); is it from another kind of network?"
    )


def _grid_from_tokens(n: int, like: Sequence[int]) -> tuple[int, int, int]:
    """Best guess of a token grid of ``n`` tokens with the aspect ratio of ``like`` (used without metadata)."""
    scale = (n / math.prod(like)) ** (1 / 3)
    guess = tuple(max(1, round(g * scale)) for g in like)
    if math.prod(guess) != n:
        raise CheckpointError(
            f"cannot infer the position grid of {n} tokens; pass source_grid (the pretraining img_size // patch_size)"
        )
    return guess  # type: ignore[return-value]


def resample_pos_embed(pos: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Trilinearly resample a ``1 L E`` position embedding from ``old_grid`` to ``new_grid`` tokens."""
    d, h, w = old_grid
    if pos.shape[1] != d * h * w:
        raise ValueError(f"position embedding with {pos.shape[1]} tokens does not fit grid {tuple(old_grid)}")
    vol = rearrange(pos.float(), "1 (d h w) e -> 1 e d h w", d=d, h=h, w=w)
    vol = F.interpolate(vol, size=tuple(new_grid), mode="trilinear", align_corners=False)
    return rearrange(vol, "1 e d h w -> 1 (d h w) e").to(pos.dtype)


def resample_bias_table(table: torch.Tensor, old_window: Sequence[int], new_window: Sequence[int]) -> torch.Tensor:
    """Trilinearly resample a relative-position bias table ``((2w1-1)(2w2-1)(2w3-1), heads)`` to another window."""
    old = [2 * w - 1 for w in old_window]
    if table.shape[0] != math.prod(old):
        raise ValueError(f"bias table with {table.shape[0]} rows does not fit window {tuple(old_window)}")
    vol = rearrange(table.float(), "(d h w) n -> 1 n d h w", d=old[0], h=old[1], w=old[2])
    vol = F.interpolate(vol, size=tuple(2 * w - 1 for w in new_window), mode="trilinear", align_corners=True)
    return rearrange(vol, "1 n d h w -> (d h w) n").to(table.dtype)


def _source_windows(encoder_config: Mapping) -> list[tuple[int, ...]] | None:
    """The per-stage windows of the nnFormer encoder the weights were trained with, from its arguments."""
    if not {"img_size", "patch_size", "window_sizes"} <= set(encoder_config):
        return None
    cfg = encoder_config
    return stage_windows(cfg["img_size"], cfg["patch_size"], cfg["window_sizes"])[1]


def load_encoder_weights(
    encoder: ViTEncoder | NnFormerEncoder,
    state: Mapping,
    source_encoder: Mapping | None = None,
    source_grid: Sequence[int] | None = None,
) -> LoadReport:
    """Load the encoder part of ``state`` into ``encoder``; never raises on a partial match, reports it instead.
    ``source_encoder``: the constructor arguments of the encoder the weights come from (a model file's network
    config has them), which say its position grid and attention windows.

    Position embeddings: when the ROI (token grid) differs, a learnable embedding is trilinearly resampled and the
    fixed sin-cos one is kept as rebuilt by the model (exact); Primus' RoPE table is a buffer rebuilt for the new
    grid (its rotations depend on position differences only). The first convolution (patch projection, stem) of
    another input channel count is adapted (:func:`adapt_input_channels`: pretrained on 1 channel, repeated over
    the model's ``C`` and scaled by ``1/C``). Anything else with a different shape is reported
    and left at its initialisation. nnFormer window-attention bias tables whose window changed with the ROI are
    trilinearly resampled (the old windows come from the checkpoint's config). Raises :class:`CheckpointError` when
    no encoder of this family is found, or one of the other family.
    """
    family = encoder.family
    src = encoder_state_from(state, family)
    first_convs = FAMILIES[family][2]
    enc_cfg = source_encoder or {}
    old_windows = _source_windows(enc_cfg) if family == "nnformer" else None
    if source_grid is None and "img_size" in enc_cfg and "patch_size" in enc_cfg:
        source_grid = [i // p for i, p in zip(enc_cfg["img_size"], enc_cfg["patch_size"])]
    own = encoder.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape == target.shape:
            to_load[key] = value
            report.loaded.append(key)
        elif key.endswith(".relative_position_index"):
            continue  # a fixed buffer of the window size, rebuilt by the model
        elif key.endswith(BIAS_TABLE) and old_windows and value.shape[1] == target.shape[1]:
            stage = int(key.split(".")[1])
            to_load[key] = resample_bias_table(value, old_windows[stage], encoder.windows[stage])
            report.resampled.append(key)
        elif key in (POS_EMBED_KEY, PRIMUS_POS_EMBED_KEY) and value.shape[-1] == target.shape[-1]:
            if getattr(encoder, "pos_embed_type", "learnable") == "sincos":
                report.regenerated.append(key)
            else:
                grid = tuple(source_grid) if source_grid else _grid_from_tokens(value.shape[1], encoder.grid_size)
                to_load[key] = resample_pos_embed(value, grid, encoder.grid_size)
                report.resampled.append(key)
        elif key in first_convs and value.shape[0] == target.shape[0] and (value.shape[2:] == target.shape[2:]):
            to_load[key] = adapt_input_channels(value, target.shape[1])
            report.adapted.append(key)
        else:
            report.shape_mismatch[key] = (tuple(value.shape), tuple(target.shape))
    fixed = {POS_EMBED_KEY} if getattr(encoder, "pos_embed_type", None) == "sincos" else set()
    fixed |= {k for k in own if k.endswith(".relative_position_index")}
    report.missing = [k for k in own if k not in src and k not in fixed]
    encoder.load_state_dict(to_load, strict=False)
    return report


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A convolution weight ``O C_src k k k`` that reads the image, for ``channels`` input channels: the sum over
    the source channels, spread evenly (``/ channels``) over the new ones, so an image repeated over the channels
    gives the source's response (nnssl and nnU-Net repeat the stem the same way)."""
    return weight.sum(dim=1, keepdim=True).repeat(1, channels, *([1] * (weight.dim() - 2))) / channels


def load_decoder_weights(
    network: torch.nn.Module,
    state: Mapping,
    report: LoadReport,
    head: Sequence[str],
    in_channels: tuple[int, int] | None = None,
) -> None:
    """Whole-network transfer, the part outside the encoder: load every tensor of ``state`` that the ``network``
    has under the same name (the decoder of a pretraining model that holds it under its segmentation twin's names,
    or of a segmentation model of the same kind), except the output ``head`` prefixes, adding to ``report``.
    ``in_channels = (source, network)``: a convolution reading the image (its second dimension the source's channel
    count) is adapted (:func:`adapt_input_channels`) when the counts differ; other shape differences are reported and
    left at their initialisation."""
    state = unwrapped_state(state)
    own = network.state_dict()
    to_load = {}
    for key, target in own.items():
        if key.startswith("encoder."):
            continue
        if key.startswith(tuple(head)):
            report.head.append(key)
        elif key not in state:
            report.missing.append(key)
        elif state[key].shape == target.shape:
            to_load[key] = state[key]
        elif (
            in_channels
            and state[key].dim() == 5
            and (state[key].shape[1], target.shape[1]) == in_channels
            and state[key].shape[0] == target.shape[0]
            and state[key].shape[2:] == target.shape[2:]
        ):
            to_load[key] = adapt_input_channels(state[key], target.shape[1])
            report.adapted.append(key)
        else:
            report.shape_mismatch[key] = (tuple(state[key].shape), tuple(target.shape))
    network.load_state_dict(to_load, strict=False)
    report.decoder_loaded.extend(to_load)


# MONAI UNETR (patch 16, 12 blocks) module names -> volmae UNETR names; the blocks themselves are identical.
_MONAI_UNETR_NAMES = {
    "vit.": "encoder.",
    "encoder1.": "stem.",
    "encoder2.": "skips.0.",
    "encoder3.": "skips.1.",
    "encoder4.": "skips.2.",
    "decoder5.": "ups.3.",
    "decoder4.": "ups.2.",
    "decoder3.": "ups.1.",
    "decoder2.": "ups.0.",
    "out.": "head.",
}


def _rename(state: Mapping[str, torch.Tensor], table: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        for old, new in table.items():
            if k.startswith(old):
                out[new + k[len(old) :]] = v
                break
        else:
            out[k] = v
    return out


def monai_unetr_to_volmae(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``monai.networks.nets.UNETR`` state dict to volmae ``UNETR`` keys (patch 16, 12 blocks)."""
    return _rename(model_state(state), _MONAI_UNETR_NAMES)


def volmae_unetr_to_monai(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`monai_unetr_to_volmae`: a volmae patch-16 UNETR as MONAI ``UNETR`` keys."""
    return _rename(model_state(state), {v: k for k, v in _MONAI_UNETR_NAMES.items()})
