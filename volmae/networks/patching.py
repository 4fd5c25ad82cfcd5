"""Pure patchify / unpatchify helpers and the grid arithmetic shared by every ViT-based network.

Shape letters used across ``volmae.networks``:
``B`` batch, ``C`` image channels, ``D H W`` spatial size (first, second, third array axis),
``d h w`` patch-grid size (``D // pD`` ...), ``L = d*h*w`` tokens, ``E`` embedding width,
``P = pD*pH*pW*C`` values in one flattened patch.

Token order is row-major over the patch grid, ``(d h w)`` with ``w`` fastest: the order of
``Conv3d(stride=patch).flatten(2)`` in MONAI's ``PatchEmbeddingBlock``, so ``patchify(x)[:, i]`` is the
patch whose embedding is token ``i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.utils import ensure_tuple_rep

__all__ = [
    "as_tuple",
    "grid_size",
    "patchify",
    "unpatchify",
    "check_patch_grid",
    "gather_tokens",
    "check_input",
    "block_indices",
    "project_patches",
    "TokenEncoderMixin",
]


def check_input(x: torch.Tensor, in_channels: int, img_size: tuple[int, int, int], encoder: str) -> None:
    """The input check of every encoder: ``x`` must be ``B C D H W`` with the channels and window it was built for.

    Written for TorchScript as well (the bundles export networks with ``torch.jit.script``)."""
    if x.dim() != 5 or x.shape[1] != in_channels or (x.shape[2], x.shape[3], x.shape[4]) != img_size:
        raise ValueError(
            f"expected input B x {in_channels} x {img_size[0]} x {img_size[1]} x {img_size[2]}, got "
            f"{list(x.shape)} (the {encoder} is built for img_size={img_size}; use sliding-window inference or "
            "rebuild it for another ROI)"
        )


def as_tuple(value: Sequence[int] | int, spatial_dims: int, name: str) -> tuple[int, ...]:
    """``value`` as a ``spatial_dims``-tuple of positive ints; a ``ValueError`` naming ``name`` otherwise."""
    try:
        out = tuple(int(v) for v in ensure_tuple_rep(value, spatial_dims))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}={value!r}: expected an int or {spatial_dims} ints ({e})") from None
    if any(v <= 0 for v in out):
        raise ValueError(f"{name}={value!r}: every size must be positive")
    return out


def check_patch_grid(img_size: Sequence[int], patch_size: Sequence[int], unit: str = "patch_size") -> None:
    """Raise a ``ValueError`` naming the nearest valid sizes when ``img_size`` is not a multiple of ``patch_size``."""
    bad = [(i, p) for i, p in zip(img_size, patch_size) if i % p]
    if bad:
        lower = tuple(max(p, (i // p) * p) for i, p in zip(img_size, patch_size))
        upper = tuple(-(-i // p) * p for i, p in zip(img_size, patch_size))
        raise ValueError(
            f"img_size={tuple(img_size)} is not divisible by {unit}={tuple(patch_size)}; "
            f"nearest valid sizes: {lower} or {upper}"
        )


def grid_size(img_size: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """Patch-grid size ``(d, h, w)`` for an image of ``img_size`` cut into ``patch_size`` patches."""
    check_patch_grid(img_size, patch_size)
    return tuple(i // p for i, p in zip(img_size, patch_size))


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``B C D H W -> B L P`` with ``P = (pD pH pW C)`` (channel fastest, as in MAE)."""
    if x.ndim != 5:
        raise ValueError(f"patchify expects B C D H W, got shape {tuple(x.shape)}")
    check_patch_grid(x.shape[2:], patch_size)
    p1, p2, p3 = patch_size
    return rearrange(x, "b c (d p1) (h p2) (w p3) -> b (d h w) (p1 p2 p3 c)", p1=p1, p2=p2, p3=p3)


def unpatchify(tokens: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int], channels: int) -> torch.Tensor:
    """``B L P -> B C D H W``; the exact inverse of :func:`patchify` for the same ``patch_size``."""
    d, h, w = grid
    p1, p2, p3 = patch_size
    if tokens.ndim != 3 or tokens.shape[1] != d * h * w or tokens.shape[2] != p1 * p2 * p3 * channels:
        raise ValueError(
            f"unpatchify: tokens of shape {tuple(tokens.shape)} do not fit grid={tuple(grid)}, "
            f"patch_size={tuple(patch_size)}, channels={channels}"
        )
    return rearrange(
        tokens, "b (d h w) (p1 p2 p3 c) -> b c (d p1) (h p2) (w p3)", d=d, h=h, w=w, p1=p1, p2=p2, p3=p3, c=channels
    )


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``B L E`` tokens, indices ``B K`` -> ``B K E``: each sample's tokens ``ids`` in that order."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def block_indices(indices: list[int], num_layers: int) -> list[int]:
    """Requested block indices (negative ones count from the end) as 0-based ones; a ``ValueError`` naming one out of
    range. The intermediate-output check of every plain-ViT encoder, written for TorchScript as well."""
    wanted: list[int] = []
    for i in indices:
        if not -num_layers <= i < num_layers:
            raise ValueError(f"intermediate index {i} is out of range for {num_layers} blocks")
        wanted.append(i % num_layers)
    return wanted


def project_patches(
    x: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, patch_size: Sequence[int]
) -> torch.Tensor:
    """``B C D H W``, token indices ``ids`` ``B K`` -> ``B K E``: a patch convolution (kernel = stride =
    ``patch_size``, ``weight`` ``E C pD pH pW``) applied to those patches only, as the linear map of each flattened
    ``(C pD pH pW)`` patch it is; MAE keeps a quarter of the tokens, so this saves three quarters of the projection."""
    p1, p2, p3 = patch_size
    patches = rearrange(x, "b c (d p1) (h p2) (w p3) -> b (d h w) (c p1 p2 p3)", p1=p1, p2=p2, p3=p3)
    return F.linear(gather_tokens(patches, ids), weight.flatten(1), bias)


class TokenEncoderMixin:
    """The encoder contract of the plain-ViT encoders (:class:`~volmae.networks.vit.ViTEncoder`,
    :class:`~volmae.networks.primus.PrimusEncoder`), in terms of the three methods each defines: ``embed``
    (``B C D H W -> B L E``), ``forward_tokens`` (blocks + final norm on any token subset) and
    ``forward_tokens_intermediates`` (the same on the full grid, keeping block outputs). Mixed in before
    ``nn.Module``; TorchScript compiles the inherited methods like the class's own."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W -> B L E`` normalised output tokens."""
        return self.forward_tokens(self.embed(x))

    def forward_intermediates(self, x: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final normalised features and the raw outputs of blocks ``indices`` (0-based), all as ``B E d h w``.

        Blocks after the last requested index still run: the final output is always the full depth.
        """
        return self.forward_tokens_intermediates(self.embed(x), indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
