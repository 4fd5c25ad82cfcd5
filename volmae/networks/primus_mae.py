"""MAE pretraining of a whole Primus network (:mod:`volmae.networks.primus`): the encoder, and the patch decoder the
segmentation network will use.

How it differs from the ViT's MAE (:mod:`volmae.networks.mae`), and why:

* **The encoder sees the visible tokens only** (75 % masked by default), as in MAE, and each keeps its place: RoPE
  rotates it by its grid position (:meth:`PrimusEncoder.forward_tokens` with ``ids``). With the convolutional
  tokenizer, whose tokens see a few voxels past their patch, the masked voxels are zeroed first.
* **A learned mask token fills the masked positions**, then ``decoder_depth`` EVA blocks over the full grid (RoPE at
  every position, plus the encoder's absolute embedding on the mask tokens) carry context into them. Primus' patch
  decoder is transposed convolutions with kernel = stride, which mix nothing between tokens: decoding the mask
  tokens straight away (as dynamic-network-architectures' ``Primus`` does after its patch drop) would predict the
  same voxels for every masked patch.
* **The segmentation network's own patch decoder reconstructs**: the mixed tokens go through ``decoder.*`` (the
  :class:`PrimusSegmenter`'s transposed-conv stages, same names) and a ``head`` with ``C`` outputs (voxel
  intensities). Fine-tuning (``volmae-train --pretrained``) loads encoder and decoder and re-initialises the head
  (:func:`volmae.artifact.load_pretrained`, whole-network transfer); ``mask_token`` and the mixing blocks
  (``mixer.*``) are pretraining-only, like MAE's decoder.
* The loss is the shared one (:class:`~volmae.networks.reconstruction.MaskedReconstruction`): MSE on the masked
  patches, per-patch normalised voxels by default.

Shapes: ``B`` batch, ``C`` channels, ``D H W`` the window, ``L`` tokens (= mask units, the encoder's patches),
``K`` visible tokens, ``E`` width, ``P = pD pH pW C``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from volmae.networks.patching import gather_tokens, patchify, unpatchify
from volmae.networks.primus import Block, PrimusEncoder, PrimusSegmenter
from volmae.networks.reconstruction import MaskedReconstruction, RandomMask

__all__ = ["PrimusMAE"]


class PrimusMAE(MaskedReconstruction):
    """Masked autoencoder of a whole Primus (``B C D H W`` -> loss, ``pred B L P``, ``mask B L``).

    Args:
        encoder: the :class:`PrimusEncoder` to pretrain (its ``img_size`` is the ROI).
        decoder_depth: EVA blocks (the encoder's width and heads) that mix context into the masked positions before
            the patch decoder; >= 1.
        mask_ratio: fraction of tokens hidden from the encoder, in (0, 1). Default 0.75.
        norm_pix_loss: regress per-patch normalised voxels.
    """

    method = "Primus MAE"

    def __init__(
        self, encoder: PrimusEncoder, decoder_depth: int = 2, mask_ratio: float = 0.75, norm_pix_loss: bool = True
    ) -> None:
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth={decoder_depth}: must be >= 1 (the patch decoder mixes no tokens)")
        super().__init__(encoder, encoder.patch_size, encoder.grid_size, mask_ratio, norm_pix_loss)
        net = PrimusSegmenter(encoder, encoder.in_channels)  # its decoder and head, under the segmenter's names
        self.decoder, self.head = net.decoder, net.head
        e, heads = encoder.hidden_size, encoder.num_heads
        hidden = encoder.blocks[0].mlp.fc1_g.out_features
        scale = encoder.blocks[0].gamma_1 is not None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, e))
        self.mixer = nn.ModuleList(
            Block(e, heads, hidden, True, 0.1 if scale else None, 0.0, 0) for _ in range(decoder_depth)
        )
        self.mixer_norm = nn.LayerNorm(e)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.mixer.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def fill_masked(self, latent: torch.Tensor, m: RandomMask) -> torch.Tensor:
        """Visible latent ``B K E`` -> the full grid ``B L E``: the mask token (plus the absolute position
        embedding, when the encoder has one) at every masked position."""
        b, k, e = latent.shape
        n = m.ids_restore.shape[1]
        fill = self.mask_token.to(latent.dtype).expand(b, n - k, e)
        tokens = gather_tokens(torch.cat([latent, fill], dim=1), m.ids_restore)
        pos = self.encoder.pos_embed
        if pos is not None:
            mask = m.mask.to(latent.dtype).unsqueeze(-1)
            tokens = tokens + pos.to(latent.dtype) * mask
        return tokens

    def forward_masked(self, x: torch.Tensor, m: RandomMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B C D H W`` with the mask ``m`` -> ``(loss, pred B L P, mask B L)``."""
        ids = m.ids_shuffle[:, : m.keep]
        enc = self.encoder
        seen = x
        if enc.tokenizer != "patch":  # conv tokens see across their patch border: hide the masked voxels
            hidden = m.mask.to(x.dtype).unsqueeze(-1).expand(-1, -1, self.patch_dim)
            seen = x * (1 - unpatchify(hidden, self.patch_size, self.grid_size, self.in_channels))
        latent = enc.forward_tokens(enc.embed_tokens(seen, ids), ids)  # B K E
        tokens = self.fill_masked(latent, m)
        rope = enc.rope if enc.use_rope else None
        for blk in self.mixer:
            tokens = blk(tokens, rope)
        volume = self.head(self.decoder(enc.to_volume(self.mixer_norm(tokens))))  # B C D H W
        pred = patchify(volume, self.patch_size)
        mask = m.mask.to(pred.dtype)
        return self.forward_loss(x, pred, mask), pred, mask
