"""3D Vision Transformer encoder (no head) built from MONAI's ``PatchEmbeddingBlock`` and ``TransformerBlock``.

Why not ``monai.networks.nets.ViT`` itself: it always runs every block on every token and returns all hidden states,
while MAE pretraining must run the blocks on the *visible* tokens only, and decoders want a chosen subset of
intermediate layers. The building blocks are MONAI's, so state-dict keys match ``monai.networks.nets.ViT``
(``patch_embedding.*``, ``blocks.N.*``, ``norm.*``) and weights move between the two without renaming.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock

from volmae.networks.patching import (
    TokenEncoderMixin,
    as_tuple,
    block_indices,
    check_input,
    gather_tokens,
    grid_size,
    project_patches,
)

__all__ = ["freeze_unused_norms", "ViTEncoder", "quiet_meshgrid"]


@contextlib.contextmanager
def quiet_meshgrid() -> Iterator[None]:
    """MONAI's sin-cos embedding calls ``torch.meshgrid`` without ``indexing`` (the default, 'ij', is what it
    means); silence torch's warning about it instead of showing it to every user at every start."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        yield


def freeze_unused_norms(blocks: nn.ModuleList) -> None:
    """Freeze ``norm_cross_attn`` of MONAI ``TransformerBlock`` s built without cross-attention.

    MONAI creates that LayerNorm in every block but only uses it for cross-attention, so it never gets a gradient:
    ``DistributedDataParallel`` refuses such parameters and the optimiser has nothing to do with them. They stay in
    the state dict, so weights remain interchangeable with MONAI's ViT / UNETR.
    """
    for block in blocks:
        if hasattr(block, "norm_cross_attn") and not getattr(block, "with_cross_attention", False):
            block.norm_cross_attn.requires_grad_(False)


class ViTEncoder(TokenEncoderMixin, nn.Module):
    """Patch-embedding ViT: ``B C D H W -> B L E`` tokens (``L = d*h*w``), no class token, no head.

    Args:
        in_channels: image channels ``C``.
        img_size: input size ``(D, H, W)`` the position embedding is built for (the training ROI).
        patch_size: ``(pD, pH, pW)``; every ``img_size`` axis must be a multiple of it.
        hidden_size: embedding width ``E``; a multiple of 6 for the fixed 3D sin-cos embedding.
        mlp_dim: MLP width inside each block.
        num_layers: number of transformer blocks.
        num_heads: attention heads (``E % num_heads == 0``).
        pos_embed_type: ``"sincos"`` (fixed, default, as in MAE / SelfMedMAE) or ``"learnable"``.
        dropout_rate: dropout in the blocks. Attention uses PyTorch SDPA when it is 0; MONAI's SDPA path applies
            ``dropout_p`` in eval mode too, so with dropout > 0 the explicit (non-SDPA) attention is used.
        qkv_bias: bias on the fused qkv projection.
        spatial_dims: must be 3 (kept for MONAI-style signatures).
    """

    family = "vit"  # the encoder family: weights load only between encoders of one family

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        pos_embed_type: str = "sincos",
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"spatial_dims={spatial_dims}: volmae's ViT is 3D only")
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels}: must be >= 1")
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers}: must be >= 1")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if pos_embed_type == "sincos" and hidden_size % 6:
            raise ValueError(f"hidden_size={hidden_size}: the 3D sin-cos position embedding needs a multiple of 6")
        if pos_embed_type not in ("sincos", "learnable"):
            raise ValueError(f"pos_embed_type={pos_embed_type!r}: expected 'sincos' or 'learnable'")
        self.in_channels = in_channels
        self.img_size = as_tuple(img_size, 3, "img_size")
        self.patch_size = as_tuple(patch_size, 3, "patch_size")
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.pos_embed_type = pos_embed_type
        with quiet_meshgrid():
            self.patch_embedding = PatchEmbeddingBlock(
                in_channels=in_channels,
                img_size=self.img_size,
                patch_size=self.patch_size,
                hidden_size=hidden_size,
                num_heads=num_heads,
                proj_type="conv",
                pos_embed_type=pos_embed_type,
                dropout_rate=dropout_rate,
                spatial_dims=3,
            )
        use_sdpa = dropout_rate == 0.0
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, use_flash_attention=use_sdpa)
            for _ in range(num_layers)
        )
        freeze_unused_norms(self.blocks)
        self.norm = nn.LayerNorm(hidden_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE initialises the conv patch projection like a linear layer (xavier on the flattened kernel).
        w = self.patch_embedding.patch_embeddings.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def layer_id(self, name: str) -> int:
        """Layer-wise learning-rate decay depth of parameter ``name``: patch embedding 0, block ``i`` ``i + 1``,
        the final norm ``num_layers + 1``."""
        root, _, rest = name.partition(".")
        if root == "patch_embedding":
            return 0
        return int(rest.partition(".")[0]) + 1 if root == "blocks" else self.num_layers + 1

    @property
    def num_tokens(self) -> int:
        d, h, w = self.grid_size
        return d * h * w

    @property
    def position_embedding(self) -> torch.Tensor | None:
        """The absolute position embedding ``1 L E`` that :meth:`embed` adds."""
        return self.patch_embedding.position_embeddings

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W -> B L E``: patch projection plus position embedding."""
        check_input(x, self.in_channels, self.img_size, "ViT")
        return self.patch_embedding(x)

    def embed_tokens(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``B C D H W``, token indices ``ids`` ``B K`` -> ``B K E``: :meth:`embed` of those tokens only.

        MAE keeps a quarter of the tokens, so embedding only those (the conv with kernel = stride = patch is a
        linear map of each flattened ``(C pD pH pW)`` patch, same weights) saves three quarters of the patch
        projection and its weight gradient. Equal to ``embed(x).gather(1, ids)`` up to float rounding (tested).
        """
        check_input(x, self.in_channels, self.img_size, "ViT")
        pe = self.patch_embedding
        conv = pe.patch_embeddings
        tokens = project_patches(x, ids, conv.weight, conv.bias, self.patch_size)  # B K E
        tokens = tokens + gather_tokens(pe.position_embeddings.expand(x.shape[0], -1, -1), ids)
        return pe.dropout(tokens)

    def to_volume(self, tokens: torch.Tensor) -> torch.Tensor:
        """``B L E -> B E d h w`` for a full (unmasked) token sequence (a reshape, not einops: TorchScript)."""
        d, h, w = self.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], d, h, w)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run all blocks and the final norm on any token subset ``B L' E`` (MAE passes visible tokens only)."""
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward_tokens_intermediates(
        self, tokens: torch.Tensor, indices: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward_intermediates` from embedded tokens ``B L E`` (the full grid, e.g. with some replaced by
        a mask token)."""
        wanted = block_indices(indices, self.num_layers)
        inter: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in wanted:
                inter[i] = self.to_volume(tokens)
        return self.to_volume(self.norm(tokens)), [inter[i] for i in wanted]
