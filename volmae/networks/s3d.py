"""Sparse-masked pretraining of a whole residual-encoder U-Net ("S3D": SparK-style 3D masked image modelling, Wald et
al., "Revisiting MAE pre-training for 3D medical image segmentation", CVPR 2025; Tian et al., SparK, ICLR 2023).

A CNN cannot drop masked tokens the way an MAE's ViT does: a convolution slides over masked voxels and would spread
their zeros (and the mask's edges) into visible features, and normalisation statistics would count them. S3D makes
the encoder behave as if the masked voxels did not exist:

* **Blocky mask**: one mask unit per bottleneck voxel, i.e. cubes of the encoder's total stride (8^3 for a
  3-down-sampling plan, 32^3 for nnU-Net's 160^3 ResEnc-L plan, the paper's 5^3-grid masking), ``mask_ratio`` 0.75 by
  default, or drawn per sample from ``[mask_ratio, mask_ratio_max]`` (the paper's U[0.6, 0.9] variant).
* **Sparse convolutions, simulated**: masked voxels are zeroed in the input and every encoder convolution's output is
  re-masked (multiplied by the visible map at its resolution), so nothing computed at a masked position ever reaches a
  visible one (SparK's submanifold emulation; every block boundary is aligned with every stride).
* **Masked normalisation**: the encoder's instance norms take their mean and variance over visible voxels only.
* **Densify at the decoder**: each encoder level's masked positions are filled with a learned per-level
  ``mask_tokens`` vector, then a ``densify`` conv-norm-act (3^3) spreads context into them before the U-Net decoder.
* **Loss**: mean squared error over the masked units only (:meth:`MaskedReconstruction.forward_loss`); targets are the
  z-scored voxels (``norm_pix_loss`` False by default, as in S3D).

Weights move as a :class:`~volmae.networks.resenc.ResEncUNet`: this module holds the U-Net's own modules under its
names (``encoder.*``, ``ups.*``, ``head.*``), so fine-tuning takes encoder **and** decoder and re-initialises the head
(:func:`volmae.artifact.load_pretrained`); ``mask_tokens`` and ``densify`` exist for pretraining only. The sparse
behaviour is a switch on the encoder's own ``Conv3d`` / ``InstanceNorm3d`` modules (:func:`sparsify`), with the
parameters and names unchanged; with no mask set they compute exactly what the dense layers do.

Mask convention: that of :mod:`volmae.networks.reconstruction` (``mask`` ``B L`` over the bottleneck grid, 1 = masked).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from monai.networks.blocks.dynunet_block import get_conv_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from volmae.networks.patching import patchify
from volmae.networks.reconstruction import MaskedReconstruction, RandomMask
from volmae.networks.resenc import ACT, NORM, ResEncEncoder, ResEncUNet

__all__ = ["SparseMaskedUNet", "VisibleMap", "sparsify", "SparseConv3d", "SparseInstanceNorm3d"]


class VisibleMap:
    """The visible voxels of the current batch at every resolution the encoder computes (``B 1 d h w``, 1 = visible),
    from one bottleneck-grid map; ``None`` outside a masked pass (the layers are then dense)."""

    def __init__(self) -> None:
        self.grid: torch.Tensor | None = None
        self._cache: dict[tuple, torch.Tensor] = {}

    def set(self, grid: torch.Tensor | None) -> None:
        self.grid, self._cache = grid, {}

    def at(self, like: torch.Tensor) -> torch.Tensor:
        """The map at ``like``'s spatial size and dtype (nearest, which repeats each grid cell over its block)."""
        key = (*like.shape[2:], like.dtype)
        if key not in self._cache:
            grid = F.interpolate(self.grid, size=tuple(like.shape[2:]), mode="nearest")  # type: ignore[arg-type]
            self._cache[key] = grid.to(like.dtype)
        return self._cache[key]

    @contextlib.contextmanager
    def hiding(self, grid: torch.Tensor) -> Iterator[None]:
        """Set ``grid`` (``B 1 d h w``, 1 = visible) for the block's computations, then clear it."""
        self.set(grid)
        try:
            yield
        finally:
            self.set(None)


class SparseConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose output is re-masked while its :class:`VisibleMap` is set."""

    visible: VisibleMap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if self.visible.grid is None else y * self.visible.at(y)


class SparseInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` whose per-sample, per-channel statistics count visible voxels only while its
    :class:`VisibleMap` is set (masked voxels stay 0)."""

    visible: VisibleMap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.visible.grid is None:
            return super().forward(x)
        v = self.visible.at(x)
        n = v.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1.0)
        mean = (x * v).sum(dim=(2, 3, 4), keepdim=True) / n
        var = ((x - mean).pow(2) * v).sum(dim=(2, 3, 4), keepdim=True) / n
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
        return y * v


def sparsify(module: nn.Module, visible: VisibleMap) -> int:
    """Turn every ``Conv3d`` / ``InstanceNorm3d`` inside ``module`` into its sparse twin reading ``visible`` (in
    place: same parameters, same state-dict names); returns how many layers changed."""
    n = 0
    for m in module.modules():
        for dense, sparse in ((nn.Conv3d, SparseConv3d), (nn.InstanceNorm3d, SparseInstanceNorm3d)):
            if type(m) is dense:
                m.__class__ = sparse
                m.visible = visible
                n += 1
    return n


class SparseMaskedUNet(MaskedReconstruction):
    """S3D masked reconstruction by a ResEnc U-Net over ``encoder`` (``B C D H W`` -> loss, ``pred B L P``,
    ``mask B L``; ``L`` bottleneck voxels, ``P`` voxels of one block times ``C``).

    Args:
        encoder: the :class:`ResEncEncoder` to pretrain (its ``img_size`` is the pretraining window).
        mask_ratio: fraction of blocks hidden, in (0, 1); default 0.75.
        mask_ratio_max: when set, each sample's ratio is drawn uniformly from ``[mask_ratio, mask_ratio_max]``.
        norm_pix_loss: regress per-block normalised voxels (S3D: off; the images are z-scored already).
    """

    method = "S3D sparse masking"

    def __init__(
        self,
        encoder: ResEncEncoder,
        mask_ratio: float = 0.75,
        mask_ratio_max: float | None = None,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__(encoder, encoder.total_stride, encoder.grid_size, mask_ratio, norm_pix_loss)
        if mask_ratio_max is not None and not mask_ratio <= mask_ratio_max < 1.0:
            raise ValueError(f"mask_ratio_max={mask_ratio_max}: must be in [mask_ratio={mask_ratio}, 1)")
        self.mask_ratio_max = mask_ratio_max
        net = ResEncUNet(encoder, encoder.in_channels)  # the reconstruction head: one output per image channel
        self.ups, self.head = net.ups, net.head
        self.visible = VisibleMap()
        sparsify(self.encoder, self.visible)
        f = encoder.filters
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1, 1)) for c in f)
        for t in self.mask_tokens:
            nn.init.trunc_normal_(t, std=0.02)
        self.densify = nn.ModuleList(
            nn.Sequential(get_conv_layer(3, c, c, k, 1, conv_only=True), get_norm_layer(NORM, 3, c), get_act_layer(ACT))
            for c, k in zip(f, encoder.kernel_size)
        )

    decode = ResEncUNet.decode  # the U-Net decoder over this module's (the U-Net's) ups

    def draw_mask(self, b, n, device, mask_ratio=None, generator=None) -> RandomMask:
        """A fresh random mask over the ``n`` blocks; with ``mask_ratio_max`` each sample draws its own ratio."""
        if mask_ratio is not None or self.mask_ratio_max is None:
            return super().draw_mask(b, n, device, mask_ratio, generator)
        rank, world = self.mask_shard
        lo, hi = self.mask_ratio, self.mask_ratio_max
        ratios = (lo + (hi - lo) * torch.rand(world * b, device=device, generator=generator))[rank * b : (rank + 1) * b]
        m = super().draw_mask(b, n, device, lo, generator)
        keep = (n * (1.0 - ratios)).round().clamp_min(1).unsqueeze(1)  # B 1, per sample
        mask = (m.ids_restore >= keep).to(m.mask.dtype)  # ids_restore: each unit's place in the noise order
        return RandomMask(m.ids_shuffle, m.ids_restore, mask, int(keep.min().item()))

    def visible_grid(self, mask: torch.Tensor) -> torch.Tensor:
        """``B L`` mask (1 = masked) -> ``B 1 d h w`` visible map on the bottleneck grid."""
        d, h, w = self.grid_size
        return rearrange(1.0 - mask.float(), "b (d h w) -> b 1 d h w", d=d, h=h, w=w)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The sparse encoder's stage outputs for ``x`` under the visible map that is set."""
        return self.encoder.forward_intermediates(x * self.visible.at(x))

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The sparse encoder's stage outputs for ``x`` with ``mask`` hidden (masked positions are 0)."""
        with self.visible.hiding(self.visible_grid(mask).to(x.device)):
            return self._encode(x)

    def forward_masked(self, x: torch.Tensor, m: RandomMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B C D H W`` with the mask ``m`` -> ``(loss, pred B L P, mask B L)``."""
        with self.visible.hiding(self.visible_grid(m.mask).to(x.device)):  # the encoder's maps serve densify too
            dense = []
            for f, token, densify in zip(self._encode(x), self.mask_tokens, self.densify):
                v = self.visible.at(f)
                dense.append(densify(f * v + token.to(f.dtype) * (1 - v)))
        pred = patchify(self.head(self.decode(dense)), self.patch_size)
        return self.forward_loss(x, pred, m.mask), pred, m.mask
