"""nnFormer segmentation network: an :class:`NnFormerEncoder` and the nnFormer decoder (Zhou et al. 2021).

Decoder, from the deepest stage ``S-1`` up to stage 0, mirroring the encoder::

    up_s:      2^3 transposed conv, E_{s+1} -> E_s, then a channel LayerNorm (nnFormer's up-sampling)
    skip_s:    skip attention: the up-sampled decoder features are the queries, the encoder's stage-s output the
               keys and values, inside the encoder's stage-s windows (nnFormer's replacement for concatenation)
    blocks_s:  decoder_depths[s] - 1 window blocks, starting with shifted windows so that they alternate with the
               unshifted skip attention
    head:      transposed conv with kernel = stride = patch_size, E_0 -> classes at full resolution (nnFormer's
               final patch expanding)

With ``deep_supervision`` the training-mode output is a list ``[full, /2, /4, ...]`` of logits, one per decoder
stage (the coarser ones from their own patch-expanding heads), for MONAI's ``DeepSupervisionLoss``; in eval mode the
output is always the full-resolution tensor, so inference code never sees the list.

Why the skip attention is ours: MONAI's ``CrossAttentionBlock`` attends over a whole sequence; nnFormer attends
inside local windows. The attention inside each window *is* MONAI's ``CrossAttentionBlock`` (SDPA), with MONAI's
``window_partition`` / ``window_reverse`` around it and MONAI's ``MLPBlock`` after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from einops import rearrange
from monai.networks.blocks import MLPBlock
from monai.networks.blocks.crossattention import CrossAttentionBlock
from monai.networks.layers import Conv
from monai.networks.nets.swin_unetr import window_partition, window_reverse

from volmae.networks.nnformer_encoder import ChannelNorm, NnFormerEncoder, WindowStage

__all__ = ["NnFormer", "SkipAttention"]


class SkipAttention(nn.Module):
    """Windowed cross-attention ``(x B C d h w, skip B C d h w) -> B C d h w``: queries from ``x``, keys and
    values from ``skip``, within ``window``-sized sub-volumes; pre-norm, residual, then an MLP."""

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window = tuple(window)
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttentionBlock(dim, num_heads, qkv_bias=True, use_flash_attention=True)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act="GELU")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        x = rearrange(x, "b c d h w -> b d h w c")
        q = window_partition(self.norm_q(x), self.window)  # (B nW) N C
        kv = window_partition(self.norm_kv(rearrange(skip, "b c d h w -> b d h w c")), self.window)
        attn = window_reverse(self.attn(q, kv).view(-1, *self.window, c), self.window, [b, d, h, w])
        x = x + attn
        x = x + self.mlp(self.norm_mlp(x))
        return rearrange(x, "b d h w c -> b c d h w")


def _expand(in_channels: int, out_channels: int, stride: Sequence[int]) -> nn.Module:
    return Conv[Conv.CONVTRANS, 3](in_channels, out_channels, tuple(stride), stride=tuple(stride))


class NnFormer(nn.Module):
    """Segmentation network ``B C D H W -> B out_channels D H W`` (logits).

    Args:
        encoder: the (pretrained or fresh) nnFormer encoder; its ``img_size`` is the network's ROI.
        out_channels: classes including background (softmax) or regions (sigmoid).
        decoder_depths: blocks per decoder stage ``0 .. S-2`` counting the skip attention (default: the encoder's).
        deep_supervision: also return coarser outputs in training mode (see the module docstring).
        mlp_ratio: MLP width / channel width in the decoder blocks.
    """

    def __init__(
        self,
        encoder: NnFormerEncoder,
        out_channels: int,
        decoder_depths: Sequence[int] | None = None,
        deep_supervision: bool = False,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        n = encoder.num_stages
        if n < 2:
            raise ValueError(f"the nnFormer decoder needs an encoder with >= 2 stages, got {n}")
        if out_channels < 1:
            raise ValueError(f"out_channels={out_channels}: must be >= 1")
        heads = encoder.num_heads
        depths = list(decoder_depths) if decoder_depths is not None else list(encoder.depths[:-1])
        if len(depths) != n - 1 or any(d < 1 for d in depths):
            raise ValueError(f"decoder_depths={depths}: need {n - 1} entries >= 1 (stages 0 .. {n - 2})")
        self.encoder = encoder
        self.out_channels = out_channels
        self.deep_supervision = deep_supervision
        dims = encoder.dims
        self.ups = nn.ModuleList(
            nn.Sequential(_expand(dims[s + 1], dims[s], (2, 2, 2)), ChannelNorm(dims[s])) for s in range(n - 1)
        )
        self.skip_attn = nn.ModuleList(
            SkipAttention(dims[s], heads[s], encoder.windows[s], mlp_ratio) for s in range(n - 1)
        )
        self.blocks = nn.ModuleList(
            WindowStage(dims[s], depths[s] - 1, heads[s], encoder.grids[s], encoder.windows[s], mlp_ratio,
                        first_shifted=True)
            for s in range(n - 1)
        )  # fmt: skip
        self.head = _expand(dims[0], out_channels, encoder.patch_size)
        # deep-supervision heads for decoder stages 1 .. S-2 (outputs at /2 .. /2**(S-2) of the input)
        self.aux_heads = nn.ModuleList(
            _expand(dims[s], out_channels, encoder.patch_size) for s in range(1, n - 1) if deep_supervision
        )

    @property
    def roi_size(self) -> tuple[int, ...]:
        return self.encoder.img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        n = self.encoder.num_stages
        out, skips = self.encoder.forward_intermediates(x, list(range(n - 1)))
        stage_outputs = []
        for s in reversed(range(n - 1)):
            out = self.blocks[s](self.skip_attn[s](self.ups[s](out), skips[s]))
            stage_outputs.append(out)
        logits = self.head(out)
        if not (self.deep_supervision and self.training):
            return logits
        coarse = stage_outputs[::-1][1:]  # decoder stages 1 .. S-2
        return [logits] + [head(f) for head, f in zip(self.aux_heads, coarse)]
