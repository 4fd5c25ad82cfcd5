"""Masked-volume pretraining of a whole UNETR: the ViT encoder, the convolutional stem and the decoder.

Why: on small volumes UNETR's accuracy rests mostly on its convolutional parts, which an encoder-only MAE never
trains. Measured on the MSD hippocampus at 10 % labels (``docs/hippocampus_study.md``): a UNETR whose ViT stayed
*frozen at its random initialisation* reached 0.811 validation Dice against 0.817 for the fully trained one, so the
ViT's learned features are worth well under a Dice point there, and an MAE encoder has little room to help. This
model pretrains everything the segmentation network will use, on unlabeled images, with the masked-reconstruction
recipe of :mod:`volmae.networks.masked_volume` (SimMIM, Xie et al. 2022; the restoration idea of Models Genesis,
Zhou et al. 2019):

* **Mask unit = one ViT patch** (``encoder.patch_size`` voxels, 8^3 for ``vit-tiny``), ``mask_ratio`` 0.6 by default
  (SimMIM's best for large units; MAE's 0.75 is for encoders that never see the masked tokens).
* **No leak**: masked voxels are zeroed in the input, so neither the convolutional stem nor the patch embedding sees
  them, and the ViT tokens of masked units are replaced by a learned ``mask_token`` (plus their position
  embedding): the encoder is told "masked here" rather than seeing a zero patch.
* **The UNETR itself reconstructs**: its head has ``in_channels`` outputs (voxel intensities), and the loss is the
  normalised-pixel MSE on the masked units only, as for every volmae pretraining model.
* **Weights move as a UNETR**: this module holds the UNETR's own modules under the UNETR's names (``encoder.*``,
  ``stem.*``, ``skips.*``, ``ups.*``, ``skip_norms.*``, ``head.*``) and borrows :meth:`UNETR.decode`, so its state
  dict is a UNETR's plus ``mask_token``; fine-tuning (``volmae-train --pretrained``) loads all of it but the head
  (:func:`volmae.artifact.load_pretrained`, whole-network transfer). Its encoder can start from an MAE run
  (``volmae-pretrain --method masked-unetr --init-from mae/model.pt``).

Mask convention: that of :mod:`volmae.networks.reconstruction` (``mask`` ``B L`` over ViT patches, 1 = masked).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import repeat

from volmae.networks.patching import patchify
from volmae.networks.primus import PrimusEncoder
from volmae.networks.reconstruction import MaskedReconstruction, RandomMask
from volmae.networks.unetr import UNETR
from volmae.networks.vit import ViTEncoder

__all__ = ["MaskedUNETR"]


class MaskedUNETR(MaskedReconstruction):
    """Masked-volume reconstruction by a UNETR over ``encoder`` (``B C D H W`` -> loss, ``pred B L P``, ``mask B L``).

    Args:
        encoder: the ViT (or Primus encoder: the ``primus-masked-unetr`` kind) to pretrain (its ``img_size`` is the
            ROI).
        feature_size, skip_norm: as :class:`UNETR` (use the fine-tuning network's, or its decoder will not load).
        mask_ratio: fraction of ViT patches hidden, in (0, 1). Default 0.6.
        norm_pix_loss: regress per-patch normalised voxels.
    """

    method = "masked UNETR"
    decode = UNETR.decode  # the UNETR decoder over this module's (the UNETR's) stem, skips, ups and head

    def __init__(
        self,
        encoder: ViTEncoder | PrimusEncoder,
        feature_size: int = 16,
        skip_norm: bool = True,
        mask_ratio: float = 0.6,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__(encoder, encoder.patch_size, encoder.grid_size, mask_ratio, norm_pix_loss)
        net = UNETR(encoder, encoder.in_channels, feature_size, skip_norm=skip_norm)
        self.skip_indices, self.levels = net.skip_indices, net.levels
        self.stem, self.skips, self.ups, self.head, self.skip_norms = (
            net.stem,
            net.skips,
            net.ups,
            net.head,
            net.skip_norms,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.hidden_size))
        nn.init.normal_(self.mask_token, std=0.02)

    def _voxel_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``B L`` patch mask -> ``B 1 D H W``."""
        (d, h, w), (p1, p2, p3) = self.grid_size, self.patch_size
        return repeat(mask, "b (d h w) -> b 1 (d p1) (h p2) (w p3)", d=d, h=h, w=w, p1=p1, p2=p2, p3=p3)

    def forward_encoder(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Zero the masked voxels of ``x`` ``B C D H W``, embed, put the mask token on masked patches; returns the
        masked input and the encoder's final and skip-block features (``B E d h w``)."""
        x = x * (1 - self._voxel_mask(mask).to(x.dtype))
        tokens = self.encoder.embed(x)  # B L E, position embedding added
        fill = self.mask_token.to(tokens.dtype)
        pos = self.encoder.position_embedding
        if pos is not None:
            fill = fill + pos
        m = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1 - m) + fill * m
        deep, hidden = self.encoder.forward_tokens_intermediates(tokens, self.skip_indices)
        return x, deep, hidden

    def forward_masked(self, x: torch.Tensor, m: RandomMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B C D H W`` with the mask ``m`` -> ``(loss, pred B L P, mask B L)``."""
        mask = m.mask
        masked, deep, hidden = self.forward_encoder(x, mask)
        pred = patchify(self.decode(masked, deep, hidden), self.patch_size)
        return self.forward_loss(x, pred, mask), pred, mask
