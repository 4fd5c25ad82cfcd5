"""Masked autoencoder around a :class:`~volmae.networks.vit.ViTEncoder` (He et al. 2021; SelfMedMAE, Zhou et al. 2022).

Mask convention: that of :mod:`volmae.networks.reconstruction` (``mask`` ``B L``, 1 = masked, 0 = visible).

Why not ``monai.networks.nets.MaskedAutoEncoderViT``: it draws the mask indices on the CPU with
``torch.multinomial`` (a host round trip per step), has no normalised-pixel loss, no reconstruction for pictures
and cannot take an existing encoder whose weights must later move into UNETR. The blocks are still MONAI's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

from volmae.networks.patching import gather_tokens
from volmae.networks.reconstruction import MaskedReconstruction, RandomMask
from volmae.networks.vit import ViTEncoder, freeze_unused_norms, quiet_meshgrid

__all__ = ["MaskedAutoencoder"]


class MaskedAutoencoder(MaskedReconstruction):
    """MAE: encode visible tokens only, decode all tokens with a light transformer, predict voxel patches.

    Args:
        encoder: the ViT to pretrain; its ``state_dict`` is stored under ``encoder.*``.
        decoder_dim / decoder_depth / decoder_heads: the light decoder (SelfMedMAE: 384 / 8 / 12).
        mask_ratio: fraction of tokens hidden from the encoder, in (0, 1). Default 0.75.
        norm_pix_loss: regress per-patch normalised voxels (mean 0, var 1 per patch), as MAE / SelfMedMAE.
    """

    method = "MAE"

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder_dim: int = 384,
        decoder_depth: int = 8,
        decoder_heads: int = 12,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ) -> None:
        if decoder_dim % decoder_heads or decoder_dim % 6:
            raise ValueError(
                f"decoder_dim={decoder_dim}: must be divisible by decoder_heads={decoder_heads} and by 6 "
                "(3D sin-cos position embedding)"
            )
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth={decoder_depth}: must be >= 1")
        super().__init__(encoder, encoder.patch_size, encoder.grid_size, mask_ratio, norm_pix_loss)

        self.decoder_embed = nn.Linear(encoder.hidden_size, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        with quiet_meshgrid():
            self.decoder_pos_embed = build_sincos_position_embedding(list(self.grid_size), decoder_dim, 3)
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(
                decoder_dim, int(decoder_dim * mlp_ratio), decoder_heads, 0.0, True, use_flash_attention=True
            )
            for _ in range(decoder_depth)
        )
        freeze_unused_norms(self.decoder_blocks)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------------ masking
    def random_masking(
        self, tokens: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample uniform masking by argsort of noise, drawn on ``tokens.device`` (no host sync).

        Returns ``visible`` ``B K E`` (``K = round(L * (1 - ratio))``, at least 1), ``mask`` ``B L`` (1 = masked)
        and ``ids_restore`` ``B L`` (the permutation that puts ``[visible, masked]`` back in token order).
        """
        m = self.draw_mask(tokens.shape[0], tokens.shape[1], tokens.device, mask_ratio, generator)
        return gather_tokens(tokens, m.ids_shuffle[:, : m.keep]), m.mask.to(tokens.dtype), m.ids_restore

    # ------------------------------------------------------------------------------------------------ passes
    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B C D H W`` -> latent of the visible tokens ``B K E``, ``mask`` ``B L``, ``ids_restore`` ``B L``."""
        m = self.draw_mask(x.shape[0], self.num_units, x.device, mask_ratio, generator)
        latent = self.encode_visible(x, m)
        return latent, m.mask.to(latent.dtype), m.ids_restore

    def encode_visible(self, x: torch.Tensor, m: RandomMask) -> torch.Tensor:
        """``B C D H W`` -> latent of the tokens ``m`` keeps visible, ``B K E``.

        Only the visible tokens are embedded (:meth:`ViTEncoder.embed_tokens`): the same result as embedding all
        and keeping the visible ones (:meth:`random_masking`), at a quarter of the patch-projection cost."""
        return self.encoder.forward_tokens(self.encoder.embed_tokens(x, m.ids_shuffle[:, : m.keep]))

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible latent ``B K E`` -> patch predictions for every token ``B L P``."""
        x = self.decoder_embed(latent)
        b, k, e = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(b, n - k, e)], dim=1)
        x = gather_tokens(x, ids_restore)
        x = x + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward_masked(self, x: torch.Tensor, m: RandomMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B C D H W`` with the mask ``m`` -> ``(loss, pred B L P, mask B L)``."""
        latent = self.encode_visible(x, m)
        pred = self.forward_decoder(latent, m.ids_restore)
        mask = m.mask.to(latent.dtype)
        return self.forward_loss(x, pred, mask), pred, mask
