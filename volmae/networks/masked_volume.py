"""Masked-volume pretraining for a hierarchical (windowed-attention) encoder such as :class:`NnFormerEncoder`.

The ViT trick, running the encoder on the visible tokens only, does not carry over: windowed attention, shifted
windows and strided convolutions need the full grid. The design chosen here follows SimMIM (Xie et al. 2022) and
SparK (Tian et al. 2023), the two published answers for hierarchical encoders, fitted to nnFormer:

* **Mask unit = the coarsest stage's token** (``encoder.total_stride`` voxels per axis, e.g. 8^3 for the tiny
  preset, 32 x 32 x 32 for the Synapse one). Masking at a finer unit would let the deeper stages, whose tokens mix a
  2x2x2 neighbourhood at each down-sampling, see part of every masked unit; at this unit a masked region is one
  whole bottleneck token.
* **No leak through the convolutional embedding**: masked voxels are zeroed in the input (the embedding's 3^3 convs
  would otherwise see across a unit's border), and the embedded tokens of masked units are replaced by a learned
  ``mask_token``, so the encoder gets "masked here" as an explicit signal rather than a zero image region.
* **A light decoder** on the deepest stage: per bottleneck token, a linear layer (SimMIM's head; optionally one hidden
  layer of ``decoder_dim``) predicts that unit's voxels. It is thrown away after pretraining; only the encoder moves
  into :class:`~volmae.networks.nnformer.NnFormer`.
* **Loss on masked units only, with per-unit normalised targets** (``norm_pix_loss``), as MAE / SelfMedMAE;
  default ``mask_ratio`` 0.6, SimMIM's best ratio for hierarchical encoders with large mask units (MAE's 0.75 is
  for encoders that never see the masked tokens).

Mask convention: that of :mod:`volmae.networks.reconstruction` (``mask`` ``B L`` over units, 1 = masked).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange, repeat

from volmae.networks.nnformer_encoder import NnFormerEncoder
from volmae.networks.reconstruction import MaskedReconstruction, RandomMask

__all__ = ["MaskedVolumeModel"]


class MaskedVolumeModel(MaskedReconstruction):
    """Masked-volume reconstruction around an :class:`NnFormerEncoder` (state under ``encoder.*``).

    Args:
        encoder: the hierarchical encoder to pretrain.
        mask_ratio: fraction of mask units hidden, in (0, 1). Default 0.6.
        norm_pix_loss: regress per-unit normalised voxels.
        decoder_dim: 0 (default) for a linear prediction head, else the width of one hidden GELU layer.
    """

    method = "masked volume"

    def __init__(
        self, encoder: NnFormerEncoder, mask_ratio: float = 0.6, norm_pix_loss: bool = True, decoder_dim: int = 0
    ) -> None:
        super().__init__(encoder, encoder.total_stride, encoder.grids[-1], mask_ratio, norm_pix_loss)
        if decoder_dim < 0:
            raise ValueError(f"decoder_dim={decoder_dim}: must be >= 0 (0 = linear head)")
        # stage-0 tokens per mask unit, per axis
        self.unit_in_tokens = tuple(t // p for t, p in zip(self.patch_size, encoder.patch_size))
        self.mask_token = nn.Parameter(torch.zeros(1, encoder.dims[0], 1, 1, 1))
        nn.init.normal_(self.mask_token, std=0.02)
        # the reconstruction reads the deepest stage only: the output norms of the shallower stages get no gradient
        # here (they are trained in fine-tuning), and DDP needs every trainable parameter to take part in the loss
        for norm in encoder.norms[:-1]:
            norm.requires_grad_(False)
        deep = encoder.dims[-1]
        self.decoder = (
            nn.Linear(deep, self.patch_dim)
            if decoder_dim == 0
            else nn.Sequential(nn.Linear(deep, decoder_dim), nn.GELU(), nn.Linear(decoder_dim, self.patch_dim))
        )

    def _expand(self, mask: torch.Tensor, unit: tuple[int, ...]) -> torch.Tensor:
        """``B L`` unit mask -> ``B 1 (d u1) (h u2) (w u3)``."""
        d, h, w = self.grid_size
        return repeat(mask, "b (d h w) -> b 1 (d u1) (h u2) (w u3)", d=d, h=h, w=w, u1=unit[0], u2=unit[1], u3=unit[2])

    def random_masking(
        self, b: int, device: torch.device, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A fresh ``B L`` unit mask (1 = masked)."""
        return self.draw_mask(b, self.num_units, device, mask_ratio, generator).mask

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``B C D H W`` and ``mask`` ``B L`` -> the deepest stage ``B E_S d h w`` of the masked volume."""
        x = x * (1 - self._expand(mask, self.patch_size).to(x.dtype))
        tokens = self.encoder.embed_input(x)
        m = self._expand(mask, self.unit_in_tokens).to(tokens.dtype)
        tokens = tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m
        return self.encoder.forward_embedded(tokens)[-1]

    def forward_decoder(self, latent: torch.Tensor) -> torch.Tensor:
        """``B E_S d h w`` -> voxel predictions for every unit ``B L P``."""
        return self.decoder(rearrange(latent, "b e d h w -> b (d h w) e"))

    def forward_masked(self, x: torch.Tensor, m: RandomMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B C D H W`` with the mask ``m`` -> ``(loss, pred B L P, mask B L)``."""
        mask = m.mask
        pred = self.forward_decoder(self.forward_encoder(x, mask))
        return self.forward_loss(x, pred, mask), pred, mask
