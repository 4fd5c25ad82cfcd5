"""Moving pretrained encoder weights between networks: key filters, position-embedding resampling, a load report.

Everything here works on tensors in memory; reading model files is :mod:`volmae.artifact`'s. States understood by
:func:`encoder_state_from`: the weights of a volmae network or encoder (optionally under ``model`` /
``state_dict`` / ``net`` / ``network_weights``), and MONAI ``UNETR`` / ``ViT`` state dicts (``vit.*`` keys),
optionally wrapped by DDP (``module.*``) or ``torch.compile`` (``_orig_mod.*``). The encoder families (``vit``,
``nnformer``, ``resenc``, ``primus``) never mix (a clear error says so).

Foreign Primus-family layouts are converted to volmae's names first (:func:`convert_foreign_primus`, which
``load_pretrained`` applies to every plain state dict): dynamic-network-architectures' ``Primus`` as nnU-Net's
Primus trainers and nnssl save it (:func:`dna_primus_to_volmae`) and timm's ``Eva`` / EVA-02 ViTs
(:func:`timm_eva_to_volmae`). Each conversion lists what it left out and why (one line per fact).
"""

from __future__ import annotations

import math
import re
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
    "ForeignPrimus",
    "DNA_PRIMUS",
    "TIMM_EVA",
    "convert_foreign_primus",
    "dna_primus_to_volmae",
    "timm_eva_to_volmae",
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
        # the tokenizer, or (a timm EVA converted without its 2D tokenizer) an EVA block's SwiGLU
        ("patch_embed.", "blocks.0.mlp.fc1_g."),
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
    """The network state inside a checkpoint (under ``model`` / ``state_dict`` / ``net``, or nnU-Net's and nnssl's
    ``network_weights``), or the mapping itself."""
    for key in ("model", "state_dict", "net", "network_weights"):
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    return ckpt


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's, torch.compile's


def _unwrapped_key(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def unwrapped_state(ckpt: Mapping) -> dict[str, torch.Tensor]:
    """:func:`model_state`'s tensors under their own names (DDP's ``module.`` and torch.compile's ``_orig_mod.``
    prefixes removed)."""
    return {_unwrapped_key(k): v for k, v in model_state(ckpt).items() if isinstance(v, torch.Tensor)}


def encoder_state_from(ckpt: Mapping, family: str = "vit") -> dict[str, torch.Tensor]:
    """Filter a checkpoint (or state dict) down to the keys of a ``family`` encoder, renamed to its own names."""
    state = unwrapped_state(ckpt)

    def find(fam: str) -> dict[str, torch.Tensor]:
        roots, marker, _ = FAMILIES[fam]  # marker: a prefix (or prefixes) only this family's keys have
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
    """Best guess of a token grid of ``n`` tokens with the aspect ratio of ``like`` (used without metadata), else a
    cube (nnssl and nnU-Net's Primus pretrain on cubic windows, e.g. 160^3 = 20^3 tokens)."""
    scale = (n / math.prod(like)) ** (1 / 3)
    guess = tuple(max(1, round(g * scale)) for g in like)
    if math.prod(guess) != n:
        side = round(n ** (1 / 3))
        if side**3 == n:
            return (side, side, side)
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


# ------------------------------------------------------------------------------- foreign Primus-family layouts
DNA_PRIMUS = "dynamic-network-architectures Primus"
TIMM_EVA = "timm Eva"
ENCODER = "encoder."  # where a Primus network holds its encoder
# Block parameters named as in volmae's Primus (timm's fused-qkv Eva); loaded as they are.
_SAME_IN_BLOCK = (
    "norm1.",
    "norm2.",
    "gamma_1",
    "gamma_2",
    "attn.qkv.weight",
    "attn.q_bias",
    "attn.v_bias",
    "attn.norm.",
    "attn.proj.",
    "mlp.fc1_g.",
    "mlp.fc1_x.",
    "mlp.norm.",
    "mlp.fc2.",
)
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
# What a foreign block may hold that volmae's cannot take, and why.
_BLOCK_LEFT_OUT = {
    "attn.q_norm.": "query / key norms (qk_norm): volmae's attention has none; they are left out",
    "attn.k_norm.": "query / key norms (qk_norm): volmae's attention has none; they are left out",
    "attn.gate.": "a gated attention output (attn.gate): volmae's attention has none; it is left out",
    "mlp.fc1.": "a fused or GELU MLP (mlp.fc1): volmae's is a SwiGLU with separate fc1_g / fc1_x and an inner "
    "norm; the MLPs are left out",
}


@dataclass
class ForeignPrimus:
    """A foreign state dict converted to volmae Primus names (``encoder.*``), with what the conversion did."""

    layout: str  # DNA_PRIMUS or TIMM_EVA
    state: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)  # one line per conversion fact
    left_out: list[str] = field(default_factory=list)  # source keys not converted (the report's unused keys)

    @property
    def width(self) -> int | None:
        """The embedding width of the converted encoder (``None`` when it holds no width-carrying tensor)."""
        for key in ("norm.weight", "pos_embed", "blocks.0.norm1.weight", "reg_token"):
            if ENCODER + key in self.state:
                return int(self.state[ENCODER + key].shape[-1])
        return None

    @property
    def depth(self) -> int:
        """The number of blocks the converted encoder holds."""
        ids = [int(m.group(1)) for k in self.state if (m := _BLOCK.match(k.removeprefix(ENCODER)))]
        return max(ids) + 1 if ids else 0


def _facts() -> dict[str, None]:
    return {}  # an ordered set: one line per fact, however many keys it covers


def _convert_blocks(
    blocks: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor], facts: dict[str, None], left_out: list[str]
) -> None:
    """EVA blocks (keys ``blocks.N.*`` under their source names) into ``out`` under volmae's (``encoder.blocks.N.*``):
    separate q / k / v projections concatenated into ``qkv`` (their biases to ``q_bias`` / ``v_bias``; a key bias
    cannot load), a fused ``qkv.bias`` split the same way."""
    by_block: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in blocks.items():
        m = _BLOCK.match(key)
        if m is None:
            left_out.append(key)
            continue
        by_block.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for i in sorted(by_block):
        params = by_block[i]
        dst = f"{ENCODER}blocks.{i}."
        projections = [params.pop(f"attn.{n}_proj.weight", None) for n in "qkv"]
        if all(p is not None for p in projections):
            out[dst + "attn.qkv.weight"] = torch.cat(projections, dim=0)  # type: ignore[arg-type]
        elif any(p is not None for p in projections):
            left_out += [f"blocks.{i}.attn.{n}_proj.weight" for n, p in zip("qkv", projections) if p is not None]
            facts["block attention with only some of q_proj / k_proj / v_proj: the attention is left out"] = None
        for n in "qv":
            if (bias := params.pop(f"attn.{n}_proj.bias", None)) is not None:
                out[dst + f"attn.{n}_bias"] = bias
        if (fused := params.pop("attn.qkv.bias", None)) is not None:
            q, k, v = fused.chunk(3)
            out[dst + "attn.q_bias"], out[dst + "attn.v_bias"] = q, v
            if k.any():
                facts["a key bias (in attn.qkv.bias) cannot load: volmae's keys have none (EVA); dropped"] = None
        if params.pop("attn.k_proj.bias", None) is not None:
            left_out.append(f"blocks.{i}.attn.k_proj.bias")
            facts[
                "attn.k_proj.bias cannot load: volmae's keys have no bias (EVA; under RoPE it would not cancel in "
                "the softmax); left out, the attention scores differ from the source's"
            ] = None
        params.pop("attn.k_bias", None)  # timm's fused layout: a non-persistent zero buffer where saved at all
        for rest, value in params.items():
            if rest.startswith(_SAME_IN_BLOCK):
                out[dst + rest] = value
                continue
            left_out.append(f"blocks.{i}.{rest}")
            why = next((w for prefix, w in _BLOCK_LEFT_OUT.items() if rest.startswith(prefix)), None)
            if why:
                facts[why] = None


def _note_block_design(out: Mapping[str, torch.Tensor], facts: dict[str, None], source: str) -> None:
    """Facts about EVA options the source was built without (its blocks then compute something else than ours)."""
    if f"{ENCODER}blocks.0.norm1.weight" not in out:
        return
    if f"{ENCODER}blocks.0.attn.norm.weight" not in out:
        facts[
            f"the {source} blocks have no attention inner norm (scale_attn_inner=False): attn.norm keeps its fresh "
            "initialisation, so the blocks compute what the source's did only after fine-tuning"
        ] = None
    if f"{ENCODER}blocks.0.gamma_1" not in out:
        facts[
            f"the {source} blocks have no LayerScale (init_values=None): gamma_1 / gamma_2 keep their fresh "
            "initialisation (0.1), scaling each residual branch down"
        ] = None


def _dna_primus(state: Mapping[str, torch.Tensor]) -> ForeignPrimus:
    out: dict[str, torch.Tensor] = {}
    facts = _facts()
    left_out: list[str] = []
    blocks = {k.removeprefix("eva."): v for k, v in state.items() if k.startswith("eva.blocks.")}
    _convert_blocks(blocks, out, facts, left_out)
    left_out[:] = ["eva." + k for k in left_out]
    registers = state.get("register_tokens")
    r = registers.shape[1] if registers is not None else 0
    pos = state.get("eva.pos_embed")
    if pos is not None:
        out[ENCODER + "pos_embed"] = pos[:, r:]
        if registers is not None:
            out[ENCODER + "reg_token"] = registers + pos[:, :r]
            facts[
                f"the {r} register slots of eva.pos_embed are folded into reg_token (DNA adds its position "
                "embedding to the registers too; volmae does not)"
            ] = None
    else:
        if registers is not None:
            out[ENCODER + "reg_token"] = registers
        facts["no eva.pos_embed (use_abs_pos_embed=False): pos_embed keeps its fresh initialisation"] = None
    proj = state.get("down_projection.proj.weight")  # DNA's PatchEmbed: a conv, kernel = stride = patch
    for key, value in state.items():
        if key.startswith("eva.blocks.") or key in ("eva.pos_embed", "register_tokens"):
            continue
        if key.startswith("eva.norm."):
            out[ENCODER + key.removeprefix("eva.")] = value
        elif key.startswith("eva.rope."):
            continue  # a fixed table (timm keeps it out of state dicts); volmae rebuilds its own for the grid
        elif key.startswith("down_projection.proj.") and proj is not None and proj.dim() == 5:
            out[ENCODER + "patch_embed." + key.removeprefix("down_projection.")] = value
        else:
            left_out.append(key)
            if key.startswith("down_projection."):
                facts[
                    "DNA's deeper tokenizer (PrimusV2 / V3: down_projection.* besides proj) has no volmae "
                    "counterpart: left out, the tokenizer starts fresh"
                ] = None
            elif key.startswith("up_projection."):
                facts[
                    "DNA's patch decoder (up_projection: LayerNorm + GELU stages, its last transposed conv the "
                    "classifier) is another design than volmae's: left out, the decoder starts fresh"
                ] = None
            elif key.startswith("decoder."):
                facts[
                    "nnssl EvaMAE's EVA decoder (decoder.*) is pretraining-only: left out. EvaMAE flattens its "
                    "tokens as (h w d), DNA's Primus (and volmae) as (w h d): the first two grid axes of its "
                    "position embedding and RoPE are swapped, as in nnU-Net's own transfer of these weights"
                ] = None
            elif key == "mask_token":
                facts["mask_token is pretraining-only: left out"] = None
    _note_block_design(out, facts, "DNA")
    return ForeignPrimus(DNA_PRIMUS, out, list(facts), left_out)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _timm_eva(state: Mapping[str, torch.Tensor]) -> ForeignPrimus:
    out: dict[str, torch.Tensor] = {}
    facts = _facts()
    left_out: list[str] = []
    _convert_blocks({k: v for k, v in state.items() if k.startswith("blocks.")}, out, facts, left_out)
    cls, registers, pos = state.get("cls_token"), state.get("reg_token"), state.get("pos_embed")
    r = registers.shape[1] if registers is not None else 0
    prefix = (1 if cls is not None else 0) + r
    if pos is not None:
        n = pos.shape[1]
        # timm's pos_embed holds slots for the class / register tokens unless built with no_embed_class
        slots = 0 if prefix == 0 or (_is_square(n) and not _is_square(n - prefix)) else prefix
        grid = n - slots
        side = math.isqrt(grid)
        shape = f"{side} x {side}" if side * side == grid else f"{grid} tokens"
        facts[
            f"pos_embed is timm's 2D grid ({shape}), not a 3D one: not loaded, pos_embed keeps its fresh "
            "initialisation" + (" (its class-token slot is dropped)" if slots and cls is not None else "")
        ] = None
        left_out.append("pos_embed")
        if registers is not None and slots:
            registers = registers + pos[:, slots - r : slots]
            facts[f"the {r} register slots of pos_embed are folded into reg_token"] = None
    if registers is not None:
        out[ENCODER + "reg_token"] = registers
    if cls is not None:
        left_out.append("cls_token")
        facts["cls_token dropped: volmae's Primus has no class token"] = None
    proj = state.get("patch_embed.proj.weight")
    for key, value in state.items():
        if key.startswith("blocks.") or key in ("pos_embed", "cls_token", "reg_token"):
            continue
        if key.startswith("norm."):
            out[ENCODER + key] = value
        elif key.startswith("patch_embed.proj.") and proj is not None and proj.dim() == 5:
            out[ENCODER + key] = value
        elif key.startswith("rope."):
            continue  # a fixed table, rebuilt for the grid
        else:
            left_out.append(key)
            if key.startswith("patch_embed."):
                shape = tuple(proj.shape) if proj is not None else "?"
                facts[
                    f"timm's patch projection is 2D {shape} (O C kh kw) and cannot become volmae's 3D one "
                    "(O C pd ph pw): not loaded, the tokenizer starts fresh"
                ] = None
            elif key.startswith("fc_norm.") and "norm.weight" not in state:
                facts[
                    "the final norm is timm's fc_norm (applied after pooling): not loaded, norm keeps its fresh "
                    "initialisation"
                ] = None
            elif key.startswith(("head.", "fc_norm.", "attn_pool.", "lm_head.", "head_drop.")):
                facts["the classification head / pooling (head, fc_norm, attn_pool, lm_head) is left out"] = None
            elif key.startswith("norm_pre."):
                facts["a pre-norm before the blocks (norm_pre) has no volmae counterpart: left out"] = None
    if out:
        facts[
            "timm's RoPE is 2D (hd / 4 frequencies on each of 2 axes), volmae's 3D (hd / 6 on each of 3): q / k "
            "weights load, but what they learned about 2D rotary positions does not carry over"
        ] = None
    _note_block_design(out, facts, "timm")
    return ForeignPrimus(TIMM_EVA, out, list(facts), left_out)


def _is_dna_primus(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("eva.blocks.", "eva.pos_embed", "down_projection.proj.")) for k in state)


def _is_timm_eva(state: Mapping[str, torch.Tensor]) -> bool:
    """timm EVA blocks (bare ``blocks.N``, SwiGLU or separate q / k / v) with something volmae's Primus never has:
    q / k / v projections, a class token, a 2D patch projection, a classifier."""
    eva_blocks = any(
        (m := _BLOCK.match(k)) and m.group(2).startswith(("attn.q_proj.", "attn.q_bias", "mlp.fc1_g.", "gamma_1"))
        for k in state
    )
    proj = state.get("patch_embed.proj.weight")
    foreign = (
        "cls_token" in state
        or "head.weight" in state
        or "fc_norm.weight" in state
        or (proj is not None and proj.dim() == 4)
        or any(k.endswith(".attn.q_proj.weight") for k in state)
    )
    return eva_blocks and foreign


def convert_foreign_primus(state: Mapping) -> ForeignPrimus | None:
    """A dynamic-network-architectures ``Primus`` (or nnssl ``EvaMAE``) or timm ``Eva`` state dict (optionally under
    ``network_weights`` / ``state_dict`` / ``model``, with ``module.`` / ``_orig_mod.`` prefixes) under volmae
    Primus names; ``None`` for any other layout (a volmae network's, MONAI's), which loads as it is."""
    state = unwrapped_state(state)
    if _is_dna_primus(state):
        return _dna_primus(state)
    if _is_timm_eva(state):
        return _timm_eva(state)
    return None


def dna_primus_to_volmae(state: Mapping) -> dict[str, torch.Tensor]:
    """dynamic-network-architectures' ``Primus`` (nnU-Net's Primus trainers, nnssl) -> volmae ``PrimusSegmenter``
    encoder keys (``encoder.*``).

    ``down_projection.proj`` -> ``patch_embed.proj``; ``eva.*`` -> the encoder, separate ``q_proj / k_proj /
    v_proj`` concatenated into ``qkv`` (their biases to ``q_bias`` / ``v_bias``; a ``k_proj.bias`` cannot load);
    ``eva.pos_embed``'s register slots (DNA adds it to the registers too) folded into ``reg_token`` (DNA's
    ``register_tokens``). DNA's RoPE is timm's ``RotaryEmbeddingCat(2/3 hd, in_pixels=False)`` over the token grid
    with interleaved pairs: volmae's :func:`~volmae.networks.primus.rope_table` exactly, so q / k rotate as they did
    (rebuilt for the target grid, at integer positions as DNA builds it for a new input shape). Left out: the patch
    decoder ``up_projection`` (another design), the pretraining-only ``mask_token`` and nnssl's EVA ``decoder``, a
    PrimusV2 / V3 residual tokenizer. :func:`convert_foreign_primus` also says what it left out."""
    return _dna_primus(unwrapped_state(state)).state


def timm_eva_to_volmae(state: Mapping) -> dict[str, torch.Tensor]:
    """timm ``Eva`` / EVA-02 ViT -> volmae ``PrimusSegmenter`` encoder keys (``encoder.*``): the blocks (separate
    ``q_proj / k_proj / v_proj`` concatenated into ``qkv``, as :func:`dna_primus_to_volmae`), ``reg_token`` (plus its
    ``pos_embed`` slots) and the final ``norm``. Not converted: the 2D patch projection and the 2D ``pos_embed``
    grid (no exact 3D counterpart; both start fresh), ``cls_token`` and its ``pos_embed`` slot, the classifier
    (``head``, ``fc_norm``, ``attn_pool``). Not detectable from the weights, so not handled: post-norm blocks
    (``EvaBlockPostNorm``) and half-split RoPE (``rotate_half=True``); timm's own LayerNorm eps is 1e-6 (volmae's and
    DNA's 1e-5)."""
    return _timm_eva(unwrapped_state(state)).state
