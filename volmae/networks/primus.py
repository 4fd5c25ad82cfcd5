"""Primus (Wald, Roy, Isensee et al. 2025, arXiv 2503.01835): a plain 3D ViT encoder with EVA-02 blocks and a light
transposed-convolution patch decoder, the transformer that holds its own against nnU-Net's CNNs on 3D segmentation.

The encoder (:class:`PrimusEncoder`) cuts the volume into ``8^3`` patches (tokens), adds a learnable absolute
position embedding, and runs EVA-02 blocks: pre-LayerNorm; attention with 3D axial rotary position embedding (RoPE) on
queries and keys and a LayerNorm on the attention output before its projection ("scale_attn_inner"); a SwiGLU MLP
(hidden ``int(E * 8/3)``) with a LayerNorm before its output projection ("scale_mlp"); LayerScale (init 0.1) and drop
path (0.2, increasing linearly over depth) on both residual branches. Optional register tokens (learnable, prepended,
never rotated, stripped from the output). :class:`PrimusSegmenter` decodes the final tokens with ``log2(patch)``
transposed-conv stages and a 1x1x1 head.

Shapes: ``B`` batch, ``C`` image channels, ``D H W`` the window, ``d h w`` its patch grid, ``L = d*h*w`` tokens,
``K`` a subset of them (MAE's visible tokens) or the classes of the segmenter's output, ``E`` the embedding width,
``R`` register tokens, ``hd = E / num_heads`` the head width.

3D axial RoPE, laid out as timm's ``RotaryEmbeddingCat`` (``in_pixels=False``) with ``dim = 2/3 hd`` (as
dynamic-network-architectures builds it for 3D), so q/k projection weights map one to one: the head width is split
into three equal parts, axis ``d`` first, then ``h``, then ``w``; each part holds ``hd / 6`` frequencies
``theta ** (-j / (hd / 6))`` (``j = 0 ..``), each as an adjacent pair of channels ``(2i, 2i + 1)`` rotated by the
angle ``position x frequency`` (integer grid positions ``0 .. d - 1`` ...). Hence ``hd % 6 == 0``. A rotation makes
``q . k`` depend on the positions' difference only; the rotation table is built once for the grid (a non-persistent
buffer, so state dicts stay clean) and looked up by token index, so a token subset (``ids``) keeps its positions.

Why not dynamic-network-architectures' ``Primus``: it builds on timm's ``Eva``; timm pins torchvision, which pins
one torch build and would replace volmae's own torch on install. Why not MONAI's ViT blocks: MONAI's
``TransformerBlock`` has no RoPE, no LayerScale, no SwiGLU with an inner norm, and MONAI's ViT cannot run on the
visible tokens only. So the blocks are written here from PyTorch pieces (``scaled_dot_product_attention``,
``nn.LayerNorm``, MONAI's ``DropPath``, MONAI's norm / activation factories for the convolutional parts).

Parameter names follow timm's ``Eva`` (fused-qkv flavour) so weights can be mapped later: ``patch_embed.proj``,
``pos_embed`` ``(1, L, E)``, ``reg_token`` ``(1, R, E)``, ``blocks.N.{norm1, attn.qkv, attn.q_bias, attn.v_bias,
attn.norm, attn.proj, gamma_1, norm2, mlp.fc1_g, mlp.fc1_x, mlp.norm, mlp.fc2, gamma_2}``, ``norm``. As in EVA the
keys have no bias (``q_bias`` and ``v_bias`` only; under RoPE a key bias would not cancel in the softmax).
dynamic-network-architectures' Primus uses separate ``q_proj / k_proj / v_proj`` (concatenate them into ``qkv``),
adds its ``pos_embed`` to the registers too (fold that slice into ``reg_token``), and ``nn.LayerNorm``'s default eps,
as here; :func:`volmae.networks.weights.dna_primus_to_volmae` converts its weights (and ``timm_eva_to_volmae`` timm's
``Eva``). Its RoPE (timm's ``RotaryEmbeddingCat(2/3 hd, in_pixels=False, feat_shape = ref_feat_shape = the token
grid)``, ``apply_rot_embed_cat`` with interleaved pairs, temperature 10000) is :func:`rope_table` /
:func:`apply_rope` exactly, so converted q / k weights rotate as they did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from volmae.networks.patching import (
    TokenEncoderMixin,
    as_tuple,
    block_indices,
    check_input,
    check_patch_grid,
    gather_tokens,
    grid_size,
    project_patches,
)
from volmae.networks.resenc import ACT, NORM

__all__ = ["PrimusEncoder", "PrimusSegmenter", "rope_table", "apply_rope", "TOKENIZERS"]

TOKENIZERS = ("patch", "conv")
POS_EMBEDS = ("learnable", "none")
CONV_TOKENIZER_WIDTH = 32  # width of the conv tokenizer's first stage; it doubles per stage, capped at E
DECODER_MIN_WIDTH = 8  # the patch decoder halves E per stage down to this floor


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_power_of_two_patch(patch: tuple[int, ...], what: str) -> None:
    if not all(_is_power_of_two(p) for p in patch):
        # the nearest power of two per axis, the larger on a tie (6 -> 8)
        nearest = tuple(
            min((2 ** (p.bit_length() - 1), 2 ** p.bit_length()), key=lambda q: (abs(q - p), -q)) for p in patch
        )
        raise ValueError(f"patch_size={patch}: {what} needs power-of-two patch sizes; nearest valid: {nearest}")


def _stage_strides(patch: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Per-stage strides that down-sample by ``patch`` in ``log2(max(patch))`` halvings; an axis with a smaller
    patch is halved in the first stages only (anisotropic patches, e.g. ``(4, 8, 8)``)."""
    stages = int(math.log2(max(patch)))
    return [tuple(2 if 2 ** (s + 1) <= p else 1 for p in patch) for s in range(stages)]  # type: ignore[misc]


def rope_table(grid: Sequence[int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """3D axial RoPE table for a ``d h w`` grid: ``L x 2 hd``, sines then cosines (timm's concatenated layout).

    Token ``t`` (row-major, ``w`` fastest) at grid position ``(i, j, k)`` gets, in channel pair ``(2m, 2m + 1)`` of
    axis part ``a``, the angle ``pos_a * theta ** (-m / (hd / 6))``."""
    if head_dim % 6:
        raise ValueError(f"head_dim={head_dim}: 3D RoPE needs a multiple of 6")
    bands = head_dim // 6
    freqs = theta ** (-torch.arange(bands, dtype=torch.float64) / bands)  # hd / 6
    axes = [torch.arange(n, dtype=torch.float64) for n in grid]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # L 3
    angles = (pos[:, :, None] * freqs).reshape(pos.shape[0], 3 * bands).repeat_interleave(2, dim=-1)  # L hd
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent channel pair of ``x`` (``... N hd``) by the angles of ``table`` (``... N 2hd``, sines
    then cosines, broadcast against ``x``): ``(x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)``."""
    hd = x.shape[-1]
    sin = table[..., :hd].to(x.dtype)  # under autocast q / k are half precision, the table float32
    cos = table[..., hd:].to(x.dtype)
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """EVA attention: fused qkv (biases on q and v only), RoPE on the non-register q and k, SDPA, an inner
    LayerNorm before the output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, num_prefix_tokens: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def _rotate(self, t: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        n = self.num_prefix_tokens
        if n > 0:
            return torch.cat([t[:, :, :n], apply_rope(t[:, :, n:], rope)], dim=2)
        return apply_rope(t, rope)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        bias: torch.Tensor | None = None
        q_bias, v_bias = self.q_bias, self.v_bias
        if q_bias is not None and v_bias is not None:
            bias = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # 3 B heads N hd
        q, k, v = qkv[0], qkv[1], qkv[2]
        if rope is not None:
            q = self._rotate(q, rope)
            k = self._rotate(k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(self.norm(out.transpose(1, 2).reshape(b, n, c)))


class SwiGLU(nn.Module):
    """EVA-02 MLP: ``fc2(norm(silu(fc1_g(x)) * fc1_x(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class Block(nn.Module):
    """Pre-norm EVA-02 block with LayerScale (``gamma_1``, ``gamma_2``; none when ``layer_scale_init`` is None)
    and drop path on both residual branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool,
        layer_scale_init: float | None,
        drop_path: float,
        num_prefix_tokens: int,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, num_prefix_tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)
        scale = layer_scale_init is not None
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if scale else None
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if scale else None
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        a = self.attn(self.norm1(x), rope)
        gamma_1 = self.gamma_1
        if gamma_1 is not None:
            a = gamma_1 * a
        x = x + self.drop_path1(a)
        m = self.mlp(self.norm2(x))
        gamma_2 = self.gamma_2
        if gamma_2 is not None:
            m = gamma_2 * m
        return x + self.drop_path2(m)


class PatchEmbed(nn.Module):
    """Tokenizer ``B C D H W -> B E d h w``: ``stem`` (identity, or the conv tokenizer's strided stages) then
    ``proj`` (the patch conv, kernel = stride = patch, or a 1x1x1 conv after the stem)."""

    def __init__(self, in_channels: int, hidden_size: int, patch: tuple[int, ...], tokenizer: str) -> None:
        super().__init__()
        if tokenizer == "patch":
            self.stem: nn.Module = nn.Identity()
            self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch, stride=patch)
            return
        stages, c_in = [], in_channels
        for s, stride in enumerate(_stage_strides(patch)):
            c_out = min(hidden_size, CONV_TOKENIZER_WIDTH * 2**s)
            stages.append(
                nn.Sequential(
                    nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
                    get_norm_layer(NORM, 3, c_out),
                    get_act_layer(ACT),
                )
            )
            c_in = c_out
        self.stem = nn.Sequential(*stages)
        self.proj = nn.Conv3d(c_in, hidden_size, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x))


class PrimusEncoder(TokenEncoderMixin, nn.Module):
    """Primus' EVA-02 ViT: ``B C D H W -> B L E`` tokens (``L = d*h*w``), no class token, no head.

    Args:
        in_channels: image channels ``C``.
        img_size: input size ``(D, H, W)`` the position embeddings are built for (the training ROI).
        patch_size: ``(pD, pH, pW)`` (Primus: 8); every ``img_size`` axis must be a multiple of it.
        hidden_size: embedding width ``E`` (Primus-S 396, -B 792, -M 864, -L 1056).
        num_layers: number of blocks (Primus-S/B 12, -M 16, -L 24).
        num_heads: attention heads (Primus-S 6); with RoPE the head width ``E / num_heads`` must be a multiple of 6.
        mlp_ratio: SwiGLU hidden width ``int(E * mlp_ratio)`` (EVA-02: 8/3).
        layer_scale_init: LayerScale init value (Primus 0.1); None for no LayerScale.
        drop_path_rate: stochastic depth of the last block; block ``i`` gets ``rate * i / (num_layers - 1)``.
        num_register_tokens: learnable tokens prepended to the sequence (not rotated, stripped from the output).
        tokenizer: ``"patch"`` (a conv with kernel = stride = patch, as Primus) or ``"conv"``: ``log2(patch)``
            stages of [3x3x3 conv (stride 2 on each axis still to be halved) + InstanceNorm + LeakyReLU], widths
            32, 64, ... capped at ``E``, then a 1x1x1 conv to ``E`` (in the spirit of PrimusV2's convolutional
            tokenizer; needs power-of-two patch sizes). Its tokens see a few voxels across their patch's border, so
            masked pretraining should mask the input volume rather than only drop tokens.
        qkv_bias: learnable q and v biases (EVA: the keys have none).
        rope: 3D axial RoPE on queries and keys (see the module docstring).
        rope_theta: RoPE base; axis part frequencies ``rope_theta ** (-j / (hd / 6))`` (timm / EVA: 10000).
        pos_embed: ``"learnable"`` absolute embedding (trunc-normal, std 0.02; Primus keeps it beside RoPE) or
            ``"none"``.
    """

    family = "primus"  # the encoder family: weights load only between encoders of one family

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 8,
        hidden_size: int = 396,
        num_layers: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 8 / 3,
        layer_scale_init: float | None = 0.1,
        drop_path_rate: float = 0.2,
        num_register_tokens: int = 0,
        tokenizer: str = "patch",
        qkv_bias: bool = True,
        rope: bool = True,
        rope_theta: float = 10000.0,
        pos_embed: str = "learnable",
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels}: must be >= 1")
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers}: must be >= 1")
        if num_heads < 1:
            raise ValueError(f"num_heads={num_heads}: must be >= 1")
        if hidden_size < num_heads or hidden_size % num_heads:
            lo, hi = max(num_heads, hidden_size // num_heads * num_heads), -(-hidden_size // num_heads) * num_heads
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; nearest valid hidden sizes: "
                f"{lo} or {hi}"
            )
        if rope and (hidden_size // num_heads) % 6:
            step = 6 * num_heads
            lo, hi = max(step, hidden_size // step * step), -(-hidden_size // step) * step
            raise ValueError(
                f"hidden_size={hidden_size} with num_heads={num_heads} gives head width {hidden_size // num_heads}; "
                f"3D RoPE needs a multiple of 6 (3 axes x sin/cos pairs): nearest valid hidden sizes {lo} or {hi}"
            )
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer={tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed={pos_embed!r}: expected one of {POS_EMBEDS}")
        if not rope and pos_embed == "none":
            raise ValueError("rope=False with pos_embed='none' leaves the tokens without position; enable one")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio}: must be > 0")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate}: must be in [0, 1)")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens={num_register_tokens}: must be >= 0")
        if layer_scale_init is not None and layer_scale_init <= 0:
            raise ValueError(f"layer_scale_init={layer_scale_init}: must be > 0 (or None for no LayerScale)")
        self.in_channels = int(in_channels)
        self.img_size = as_tuple(img_size, 3, "img_size")
        self.patch_size = as_tuple(patch_size, 3, "patch_size")
        check_patch_grid(self.img_size, self.patch_size)
        if tokenizer == "conv":
            _check_power_of_two_patch(self.patch_size, "the conv tokenizer")
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.num_register_tokens = int(num_register_tokens)
        self.tokenizer = tokenizer
        self.use_rope = bool(rope)
        d, h, w = self.grid_size

        self.patch_embed = PatchEmbed(in_channels, hidden_size, self.patch_size, tokenizer)
        self.pos_embed = nn.Parameter(torch.zeros(1, d * h * w, hidden_size)) if pos_embed == "learnable" else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_register_tokens, hidden_size)) if num_register_tokens else None
        table = rope_table(self.grid_size, hidden_size // num_heads, rope_theta) if rope else torch.zeros(0)
        self.register_buffer("rope", table, persistent=False)  # L x 2hd (empty without RoPE)
        rates = torch.linspace(0, drop_path_rate, num_layers).tolist()
        hidden = int(hidden_size * mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, hidden, qkv_bias, layer_scale_init, rates[i], num_register_tokens)
            for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's Eva: trunc-normal(0.02) linears with zero biases, the residual-branch outputs (attn.proj, mlp.fc2)
        # of block i divided by sqrt(2 (i + 1)); trunc-normal(0.02) position / register tokens. Tokenizer convs:
        # He init with LeakyReLU slope 0.01 (dynamic-network-architectures' InitWeights_He(1e-2)).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=1e-2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for i, blk in enumerate(self.blocks):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * (i + 1)))
        for p in (self.pos_embed, self.reg_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def layer_id(self, name: str) -> int:
        """Layer-wise learning-rate decay depth of parameter ``name``: tokenizer, position embedding and registers
        0, block ``i`` ``i + 1``, the final norm ``num_layers + 1``."""
        root, _, rest = name.partition(".")
        if root in ("patch_embed", "pos_embed", "reg_token"):
            return 0
        return int(rest.partition(".")[0]) + 1 if root == "blocks" else self.num_layers + 1

    @property
    def num_tokens(self) -> int:
        d, h, w = self.grid_size
        return d * h * w

    @property
    def position_embedding(self) -> torch.Tensor | None:
        """The absolute position embedding ``1 L E`` that :meth:`embed` adds (None with ``pos_embed="none"``; RoPE
        places the tokens inside attention)."""
        return self.pos_embed

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W -> B L E``: tokenizer plus the absolute position embedding."""
        check_input(x, self.in_channels, self.img_size, "Primus encoder")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        pos = self.pos_embed
        if pos is not None:
            tokens = tokens + pos
        return tokens

    def embed_tokens(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``B C D H W``, token indices ``ids`` ``B K`` -> ``B K E``: :meth:`embed` of those tokens only.

        The patch tokenizer is a linear map of each flattened ``(C pD pH pW)`` patch, so only the kept patches are
        projected (MAE keeps a quarter); the conv tokenizer's tokens overlap, so it embeds all and gathers."""
        if self.tokenizer != "patch":
            return gather_tokens(self.embed(x), ids)
        check_input(x, self.in_channels, self.img_size, "Primus encoder")
        conv = self.patch_embed.proj
        tokens = project_patches(x, ids, conv.weight, conv.bias, self.patch_size)  # B K E
        if self.pos_embed is not None:
            tokens = tokens + gather_tokens(self.pos_embed.expand(x.shape[0], -1, -1), ids)
        return tokens

    def to_volume(self, tokens: torch.Tensor) -> torch.Tensor:
        """``B L E -> B E d h w`` for a full (unmasked, register-free) token sequence."""
        d, h, w = self.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], d, h, w)

    def _rope_for(self, tokens: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor | None:
        """The RoPE table of ``tokens`` (``B K E``): the whole grid's (``ids`` None: ``K`` must be ``L``) or the rows
        of their indices ``ids`` (``B K``), shaped to broadcast over heads."""
        if ids is None:
            if tokens.shape[1] != self.num_tokens:
                raise ValueError(
                    f"got {tokens.shape[1]} tokens without ids; the full grid has {self.num_tokens} "
                    "(pass ids, B x K token indices, to run a subset)"
                )
        elif ids.dim() != 2 or ids.shape[0] != tokens.shape[0] or ids.shape[1] != tokens.shape[1]:
            raise ValueError(f"ids of shape {list(ids.shape)} do not match tokens of shape {list(tokens.shape)}")
        if not self.use_rope:
            return None
        if ids is None:
            return self.rope
        return self.rope[ids].unsqueeze(1)  # B 1 K 2hd

    def _with_registers(self, tokens: torch.Tensor) -> torch.Tensor:
        reg = self.reg_token
        if reg is not None:
            return torch.cat([reg.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens

    def forward_tokens(self, tokens: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run all blocks and the final norm on embedded tokens: the full grid ``B L E`` (``ids`` None) or any subset
        ``B K E`` with its grid indices ``ids`` ``B K`` (MAE passes the visible tokens), which place the RoPE.
        Registers are prepended inside and stripped from the output: ``B K E``."""
        rope = self._rope_for(tokens, ids)
        x = self._with_registers(tokens)
        for blk in self.blocks:
            x = blk(x, rope)
        return self.norm(x[:, self.num_register_tokens :])

    def forward_tokens_intermediates(
        self, tokens: torch.Tensor, indices: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward_intermediates` from embedded tokens ``B L E`` (the full grid, e.g. with some replaced by
        a mask token)."""
        wanted = block_indices(indices, self.num_layers)
        rope = self._rope_for(tokens, None)
        r = self.num_register_tokens
        x = self._with_registers(tokens)
        inter: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope)
            if i in wanted:
                inter[i] = self.to_volume(x[:, r:])
        return self.to_volume(self.norm(x[:, r:])), [inter[i] for i in wanted]


class PrimusSegmenter(nn.Module):
    """Primus segmentation network ``B C D H W -> B K D H W`` (logits): the encoder's final tokens as a volume
    ``B E d h w``, then the light patch decoder.

    Decoder: ``log2(max(patch))`` stages of [ConvTranspose3d (kernel = stride = 2 on each axis still to be
    up-sampled, the tokenizer's strides in reverse) + InstanceNorm + LeakyReLU], halving the width from ``E`` (floor
    8), then the 1x1x1 conv ``head`` (the whole-network transfer re-initialises modules named ``head``).
    dynamic-network-architectures' ``PatchDecode`` instead shrinks the width geometrically towards the classes with
    LayerNorm + GELU and makes its last transposed conv the classifier; the nnU-Net norm / activation and a separate
    head keep this decoder in line with volmae's other segmenters.

    Args:
        encoder: the (pretrained or fresh) :class:`PrimusEncoder`; its ``img_size`` is the network's ROI and its
            patch sizes must be powers of two.
        out_channels: classes including background (softmax) or regions (sigmoid).
    """

    def __init__(self, encoder: PrimusEncoder, out_channels: int) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels={out_channels}: must be >= 1")
        _check_power_of_two_patch(encoder.patch_size, "the Primus patch decoder")
        self.encoder = encoder
        self.out_channels = int(out_channels)
        stages, c_in = [], encoder.hidden_size
        for stride in reversed(_stage_strides(encoder.patch_size)):
            c_out = max(DECODER_MIN_WIDTH, c_in // 2)
            stages.append(
                nn.Sequential(
                    nn.ConvTranspose3d(c_in, c_out, kernel_size=stride, stride=stride),
                    get_norm_layer(NORM, 3, c_out),
                    get_act_layer(ACT),
                )
            )
            c_in = c_out
        self.decoder = nn.Sequential(*stages)  # identity for patch 1
        self.head = nn.Conv3d(c_in, out_channels, kernel_size=1)
        for m in [*self.decoder.modules(), self.head]:
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, a=1e-2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.encoder.img_size

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Final encoder features ``B E d h w`` -> ``B K D H W`` logits."""
        return self.head(self.decoder(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W`` -> ``B K D H W`` logits."""
        return self.decode(self.encoder.to_volume(self.encoder.forward_features(x)))
