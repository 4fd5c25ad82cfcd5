"""UNETR (Hatamizadeh et al. 2021) over a :class:`ViTEncoder` (or a Primus-style
:class:`~volmae.networks.primus.PrimusEncoder`) of any power-of-two patch size.

Why not ``monai.networks.nets.UNETR``: it hard-codes patch 16 (four up-sampling stages, skips from blocks 3/6/9)
and builds its own ViT. Small volumes such as the MSD hippocampus crops (~35 x 50 x 35 voxels) need patch 8, and
MAE fine-tuning needs the pretrained encoder passed in. The decoder blocks are MONAI's own
(``UnetrBasicBlock``, ``UnetrPrUpBlock``, ``UnetrUpBlock``, ``UnetOutBlock``), so for patch 16 and 12 blocks this
network is MONAI's UNETR layer for layer (same skip layers, same block shapes) when built with ``skip_norm=False``.

Layout for patch ``2**k`` (``k`` up-sampling stages): the final encoder output (``/2**k``) is decoded upwards; stage
``s = k-1 .. 1`` concatenates a skip made from encoder block ``skip_indices[s-1]`` (up-sampled ``k-s`` times to
``/2**s``), and the last stage concatenates a convolutional stem on the raw input at full resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

from volmae.networks.primus import PrimusEncoder
from volmae.networks.vit import ViTEncoder

__all__ = ["UNETR", "default_skip_indices"]


def default_skip_indices(num_layers: int, levels: int) -> list[int]:
    """Evenly spaced encoder blocks for the ``levels - 1`` ViT skips: 12 blocks, 4 levels -> [3, 6, 9] (MONAI's)."""
    step = num_layers // levels
    if step < 1:
        raise ValueError(f"{num_layers} encoder blocks are too few for {levels} decoder levels")
    return [step * s for s in range(1, levels)]


class UNETR(nn.Module):
    """Segmentation network ``B C D H W -> B out_channels D H W`` (logits).

    Args:
        encoder: the (pretrained or fresh) ViT, or a Primus encoder (EVA-02 blocks, RoPE: the ``primus-unetr``
            kind, whose skips then come from its blocks' outputs); its ``img_size`` is the network's ROI.
        out_channels: classes including background (softmax) or regions (sigmoid).
        feature_size: width of the full-resolution stage; stage ``s`` has ``feature_size * 2**s`` channels.
        skip_indices: encoder blocks feeding the ``k - 1`` ViT skips, shallow to deep (default evenly spaced).
        norm_name: MONAI norm for the decoder blocks (``"instance"``, ``"batch"``, ...).
        res_block: residual conv blocks in the decoder (MONAI default True).
        skip_norm: a LayerNorm on each intermediate encoder output before its skip path (default True). The
            residual stream of an MAE-pretrained ViT grows large (per-channel std ~25 after 60 epochs on the
            hippocampus, vs ~2 at initialisation) and would swamp the decoder; MONAI's UNETR has no such norm, so
            ``skip_norm=False`` gives MONAI's exact layout.
    """

    def __init__(
        self,
        encoder: ViTEncoder | PrimusEncoder,
        out_channels: int,
        feature_size: int = 16,
        skip_indices: Sequence[int] | None = None,
        norm_name: tuple | str = "instance",
        res_block: bool = True,
        skip_norm: bool = True,
    ) -> None:
        super().__init__()
        p = encoder.patch_size
        if len(set(p)) != 1 or p[0] < 2 or p[0] & (p[0] - 1):
            raise ValueError(f"patch_size={p}: UNETR needs an isotropic power-of-two patch (e.g. 8 or 16)")
        if out_channels < 1:
            raise ValueError(f"out_channels={out_channels}: must be >= 1")
        if feature_size < 1:
            raise ValueError(f"feature_size={feature_size}: must be >= 1")
        levels = int(math.log2(p[0]))
        skips = list(skip_indices) if skip_indices is not None else default_skip_indices(encoder.num_layers, levels)
        if len(skips) != levels - 1:
            raise ValueError(f"skip_indices={skips}: patch {p[0]} needs {levels - 1} skip layers")
        for i in skips:
            if not 0 <= i < encoder.num_layers:
                raise ValueError(f"skip index {i} is out of range for {encoder.num_layers} encoder blocks")
        self.encoder = encoder
        self.skip_indices = skips
        self.levels = levels
        self.out_channels = out_channels
        hidden, fs = encoder.hidden_size, feature_size

        self.stem = UnetrBasicBlock(3, encoder.in_channels, fs, 3, 1, norm_name, res_block=res_block)
        # ViT skip for stage s (1 .. k-1): block tokens at /2**k -> /2**s, i.e. k - s transposed convs.
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(
                spatial_dims=3,
                in_channels=hidden,
                out_channels=fs * 2**s,
                num_layer=levels - s - 1,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm_name,
                conv_block=True,
                res_block=res_block,
            )
            for s in range(1, levels)
        )
        # Up stage s (k-1 .. 0): /2**(s+1) -> /2**s, concatenated with the skip at that scale. A dict keyed by the
        # scale (state-dict keys ups.<s>.*) in the order the decoder runs them, deepest first: TorchScript can
        # iterate a module container but not index one with a variable.
        self.ups = nn.ModuleDict(
            (
                str(s),
                UnetrUpBlock(
                    3,
                    hidden if s == levels - 1 else fs * 2 ** (s + 1),
                    fs * 2**s,
                    3,
                    2,
                    norm_name,
                    res_block=res_block,
                ),
            )
            for s in reversed(range(levels))
        )
        self.head = UnetOutBlock(3, fs, out_channels)
        self.skip_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in skips) if skip_norm else nn.ModuleList()

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.encoder.img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep, hidden = self.encoder.forward_intermediates(x, self.skip_indices)  # B E d h w each
        return self.decode(x, deep, hidden)

    def decode(self, x: torch.Tensor, deep: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        """The decoder: input ``x`` ``B C D H W`` (for the stem), the encoder's final ``deep`` and skip-block
        ``hidden`` features (``B E d h w`` each, as :meth:`ViTEncoder.forward_intermediates` returns them at
        ``skip_indices``) -> ``B out_channels D H W``."""
        normed: list[torch.Tensor] = []
        for i, norm in enumerate(self.skip_norms):  # none without skip_norm
            normed.append(norm(hidden[i].permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3))
        if len(normed) > 0:
            hidden = normed
        skips = [self.stem(x)]  # scale /1, /2, ..., /2**(k-1)
        for i, blk in enumerate(self.skips):
            skips.append(blk(hidden[i]))
        out = deep
        for scale, up in self.ups.items():  # deepest first
            out = up(out, skips[int(scale)])
        return self.head(out)
