"""nnFormer-style hierarchical 3D encoder (Zhou et al. 2021, arXiv 2109.03201), written from the paper.

Layout, for ``S`` stages of widths ``E_s = E * 2**s``::

    B C D H W --ConvEmbedding (two strided 3^3 conv pairs, total stride = patch)--> B E d0 h0 w0
    stage 0:          window blocks on the d0 h0 w0 grid
    stage s > 0:      ConvDown (3^3 conv, stride 2, E_{s-1} -> E_s) then window blocks on grid_{s-1} / 2
    each stage's output, LayerNorm-ed over channels, is a skip for the decoder: B E_s d_s h_s w_s

Window blocks are local volume-based self-attention (LV-MSA: attention inside non-overlapping ``window^3``
sub-volumes), every second block with windows shifted by half a window (SLV-MSA) so information crosses window
borders. A stage whose window is 0, or at least its grid, attends over its whole grid: global volume-based
self-attention (GV-MSA), which the paper uses at the coarsest stage.

Why the stage is ours, not MONAI's ``swin_unetr.BasicLayer``: BasicLayer pads grids up to window multiples and clips
windows larger than the grid at run time while the attention's relative-position table stays built for the unclipped
window; here windows are fixed from ``img_size`` at construction and a grid that does not tile is an error naming
the nearest sizes that do (a frequent complaint on nnFormer's tracker). It also cannot start with a shifted block,
which the decoder wants after its skip attention. The blocks themselves are MONAI's ``SwinTransformerBlock`` (window
attention with relative position bias, SDPA at inference) and its ``compute_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from einops import rearrange
from monai.networks.layers import Act, Conv
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask

from volmae.networks.patching import as_tuple, check_input

__all__ = ["NnFormerEncoder", "ChannelNorm", "WindowStage", "stage_windows", "nearest_valid_sizes"]


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of ``B C D H W`` (nnFormer's norm after convolutions)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(super().forward(rearrange(x, "b c d h w -> b d h w c")), "b d h w c -> b c d h w")


def stage_windows(
    img_size: Sequence[int], patch_size: Sequence[int], window_sizes: Sequence[int]
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Grids and effective windows of every stage, or a ``ValueError`` naming the nearest valid ``img_size``.

    Stage ``s`` has grid ``img_size / (patch * 2**s)``; its window is ``window_sizes[s]`` per axis, or the whole axis
    when that is 0 or at least the grid (global attention). Every grid axis must be a whole number divisible by
    its window.
    """
    problems = [_axis_problem(i, p, window_sizes) for i, p in zip(img_size, patch_size)]
    if any(problems):
        lower, upper = nearest_valid_sizes(img_size, patch_size, window_sizes)
        why = "; ".join(p for p in problems if p)
        raise ValueError(
            f"img_size={tuple(img_size)} does not fit patch_size={tuple(patch_size)}, {len(window_sizes)} stages and "
            f"window_sizes={tuple(window_sizes)} ({why}); nearest valid sizes: {lower} or {upper}"
        )
    grids, windows = [], []
    for s, w in enumerate(window_sizes):
        grid = tuple(i // (p * 2**s) for i, p in zip(img_size, patch_size))
        grids.append(grid)
        windows.append(tuple(g if w == 0 or w >= g else w for g in grid))
    return grids, windows


def _axis_problem(size: int, patch: int, window_sizes: Sequence[int]) -> str:
    stride = patch * 2 ** (len(window_sizes) - 1)
    if size % stride:
        return f"{size} is not a multiple of patch x 2**(stages-1) = {stride}"
    for s, w in enumerate(window_sizes):
        g = size // (patch * 2**s)
        if 0 < w < g and g % w:
            return f"stage {s} grid {g} is not a multiple of its window {w}"
    return ""


def _nearest(size: int, patch: int, window_sizes: Sequence[int], direction: int) -> int:
    stride = patch * 2 ** (len(window_sizes) - 1)
    s = max(stride, size // stride * stride) if direction < 0 else -(-size // stride) * stride
    while _axis_problem(s, patch, window_sizes):
        s += direction * stride
        if s < stride:  # nothing valid below: report the smallest valid one above instead
            return _nearest(stride, patch, window_sizes, +1)
    return s


def nearest_valid_sizes(
    img_size: Sequence[int], patch_size: Sequence[int], window_sizes: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The largest valid size ``<= img_size`` and the smallest ``>= img_size``, per axis."""
    lower = tuple(_nearest(i, p, window_sizes, -1) for i, p in zip(img_size, patch_size))
    upper = tuple(_nearest(i, p, window_sizes, +1) for i, p in zip(img_size, patch_size))
    return lower, upper


class WindowStage(nn.Module):
    """``depth`` MONAI ``SwinTransformerBlock`` s on a fixed grid, ``B C d h w -> B C d h w``.

    Blocks alternate unshifted / shifted windows, starting shifted when ``first_shifted``; a window that spans an
    axis is never shifted along it (global attention needs no shift).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        grid: Sequence[int],
        window: Sequence[int],
        mlp_ratio: float = 4.0,
        drop_path: Sequence[float] | float = 0.0,
        qkv_bias: bool = True,
        first_shifted: bool = False,
    ) -> None:
        super().__init__()
        self.grid, self.window = tuple(grid), tuple(window)
        self.shift = tuple(w // 2 if w < g else 0 for w, g in zip(self.window, self.grid))
        rates = [drop_path] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.shifted = [bool((i + first_shifted) % 2) and any(self.shift) for i in range(depth)]
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                self.window,
                self.shift if shifted else (0, 0, 0),
                mlp_ratio,
                qkv_bias,
                drop_path=rates[i],
                use_flash_attention=True,
            )
            for i, shifted in enumerate(self.shifted)
        )
        # the shifted windows' attention mask depends on the fixed grid only: built once, moves with .to(device)
        mask = compute_mask(self.grid, self.window, self.shift, None) if any(self.shifted) else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b c d h w -> b d h w c")
        mask = self.attn_mask.to(x.dtype) if self.attn_mask is not None else None
        for blk in self.blocks:
            x = blk(x, mask)
        return rearrange(x, "b d h w c -> b c d h w")


def conv_pair(in_channels: int, out_channels: int, stride: Sequence[int], last: bool) -> nn.Sequential:
    """nnFormer's ``project``: strided 3^3 conv, GELU, 3^3 conv, then (except for the last pair) GELU + norm."""
    conv = Conv[Conv.CONV, 3]
    layers: list[nn.Module] = [
        conv(in_channels, out_channels, 3, stride=tuple(stride), padding=1),
        Act[Act.GELU](),
        conv(out_channels, out_channels, 3, stride=1, padding=1),
    ]
    if not last:
        layers += [Act[Act.GELU](), ChannelNorm(out_channels)]
    return nn.Sequential(*layers)


class NnFormerEncoder(nn.Module):
    """Hierarchical encoder ``B C D H W -> [B E_s d_s h_s w_s for each stage s]``, no head.

    Args:
        in_channels: image channels ``C``.
        img_size: input size ``(D, H, W)`` the windows are laid out for (the training ROI).
        patch_size: total stride of the convolutional embedding per axis (each axis even, e.g. ``(2, 4, 4)``).
        embed_dim: width ``E`` of stage 0; stage ``s`` has ``E * 2**s`` channels.
        depths: window blocks per stage (``S = len(depths)`` stages).
        num_heads: attention heads per stage (``E * 2**s`` divisible by ``num_heads[s]``).
        window_sizes: window edge per stage in tokens; 0 (or >= the grid) = global attention on that stage.
        mlp_ratio: MLP width / channel width inside blocks.
        drop_path_rate: stochastic depth, linearly increasing over all blocks up to this rate.
        spatial_dims: must be 3.
    """

    family = "nnformer"  # the encoder family: weights load only between encoders of one family

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = (2, 4, 4),
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (6, 12, 24, 48),
        window_sizes: Sequence[int] = (4, 4, 8, 4),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"spatial_dims={spatial_dims}: volmae's nnFormer is 3D only")
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels}: must be >= 1")
        if not depths or len(num_heads) != len(depths) or len(window_sizes) != len(depths):
            raise ValueError(
                f"depths={tuple(depths)}, num_heads={tuple(num_heads)} and window_sizes={tuple(window_sizes)} must "
                "be non-empty and of equal length (one entry per stage)"
            )
        if any(d < 1 for d in depths) or any(w < 0 for w in window_sizes):
            raise ValueError(f"depths={tuple(depths)} must be >= 1 and window_sizes={tuple(window_sizes)} >= 0")
        self.patch_size = as_tuple(patch_size, 3, "patch_size")
        if any(p % 2 for p in self.patch_size):
            raise ValueError(f"patch_size={self.patch_size}: every axis must be even (two conv pairs, as nnFormer)")
        self.dims = [embed_dim * 2**s for s in range(len(depths))]
        for dim, heads in zip(self.dims, num_heads):
            if dim % heads:
                raise ValueError(f"stage width {dim} is not divisible by num_heads={heads}")
        self.in_channels = in_channels
        self.img_size = as_tuple(img_size, 3, "img_size")
        self.grids, self.windows = stage_windows(self.img_size, self.patch_size, window_sizes)
        self.num_stages = self.num_layers = len(depths)
        self.depths, self.num_heads = tuple(depths), tuple(num_heads)
        self.total_stride = tuple(p * 2 ** (self.num_stages - 1) for p in self.patch_size)

        stride1 = tuple(p // 2 for p in self.patch_size)
        self.embed = nn.Sequential(
            conv_pair(in_channels, embed_dim // 2, stride1, last=False),
            conv_pair(embed_dim // 2, embed_dim, (2, 2, 2), last=True),
            ChannelNorm(embed_dim),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:s]) for s in range(len(depths))]
        self.downs = nn.ModuleList(
            nn.Sequential(Conv[Conv.CONV, 3](self.dims[s - 1], self.dims[s], 3, stride=2, padding=1),
                          ChannelNorm(self.dims[s]))
            for s in range(1, self.num_stages)
        )  # fmt: skip
        self.stages = nn.ModuleList(
            WindowStage(
                self.dims[s],
                depths[s],
                num_heads[s],
                self.grids[s],
                self.windows[s],
                mlp_ratio,
                rates[starts[s] : starts[s] + depths[s]],
                qkv_bias,
            )
            for s in range(self.num_stages)
        )
        self.norms = nn.ModuleList(ChannelNorm(d) for d in self.dims)

    def layer_id(self, name: str) -> int:
        """Layer-wise learning-rate decay depth of parameter ``name``: embedding 0, stage ``s`` (with the
        down-sampling before it and its output norm) ``s + 1``."""
        root, _, rest = name.partition(".")
        if root == "embed":
            return 0
        index = int(rest.partition(".")[0])
        return index + 2 if root == "downs" else index + 1

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W -> B E d0 h0 w0``: the convolutional embedding."""
        check_input(x, self.in_channels, self.img_size, "nnFormer encoder")
        return self.embed(x)

    def forward_embedded(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the stages on an embedding ``B E d0 h0 w0`` (masked pretraining edits it first); every stage's
        normalised output, shallow to deep."""
        outs = []
        for s, stage in enumerate(self.stages):
            if s:
                x = self.downs[s - 1](x)
            x = stage(x)
            outs.append(self.norms[s](x))
        return outs

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The deepest stage's output and the outputs of stages ``indices`` (0-based), all ``B E_s d_s h_s w_s``."""
        for i in indices:
            if not -self.num_stages <= i < self.num_stages:
                raise ValueError(f"stage index {i} is out of range for {self.num_stages} stages")
        outs = self.forward_embedded(self.embed_input(x))
        return outs[-1], [outs[i] for i in indices]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W -> B E_{S-1} d h w``: the deepest stage's output."""
        return self.forward_embedded(self.embed_input(x))[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
