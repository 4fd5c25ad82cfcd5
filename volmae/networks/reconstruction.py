"""What every masked-reconstruction pretraining model shares: the random mask, normalised-pixel targets, the loss on
masked patches, and full-volume pictures.

Mask convention (used everywhere in volmae): ``mask`` is ``B L`` with **1 = masked (hidden from the encoder, to be
reconstructed)** and **0 = visible**; ``L`` counts the model's mask units (its ``patch_size`` cubes) in the token
order of :mod:`volmae.networks.patching`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from volmae.networks.patching import patchify, unpatchify
from volmae.utils.runtime import failure_reason

__all__ = ["MaskedReconstruction", "RandomMask", "random_mask"]

logger = logging.getLogger(__name__)


class RandomMask(NamedTuple):
    ids_shuffle: torch.Tensor  # B L, the first ``keep`` are the visible units
    ids_restore: torch.Tensor  # B L, puts ``[visible, masked]`` back in unit order
    mask: torch.Tensor  # B L, 1 = masked
    keep: int  # visible units per sample


def random_mask(
    b: int,
    n: int,
    ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] = (0, 1),
) -> RandomMask:
    """Per-sample uniform masking of ``n`` units by argsort of noise drawn on ``device`` (no host sync);
    ``keep = round(n * (1 - ratio))``, at least 1. ``shard = (rank, world_size)``: draw the noise of the global
    batch of ``world_size x b`` samples and keep rows ``rank x b ..``, so that data-parallel ranks mask their
    samples exactly as one process masks the whole batch."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio={ratio}: must be in [0, 1)")
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard={shard}: expected (rank, world_size) with 0 <= rank < world_size")
    keep = max(1, int(round(n * (1.0 - ratio))))
    noise = torch.rand(world * b, n, device=device, generator=generator)[rank * b : (rank + 1) * b]
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=device)
    mask[:, :keep] = 0
    return RandomMask(ids_shuffle, ids_restore, torch.gather(mask, 1, ids_restore), keep)


class MaskedReconstruction(nn.Module):
    """Base of :class:`~volmae.networks.mae.MaskedAutoencoder` and
    :class:`~volmae.networks.masked_volume.MaskedVolumeModel`.

    Subclasses pass their encoder, mask unit ``patch_size``, unit ``grid_size``, ``mask_ratio`` and ``norm_pix_loss``
    and implement :meth:`forward_masked`; :meth:`forward` draws the mask and calls it (compiled after
    :meth:`compile_pass`).
    """

    method = "masked reconstruction"  # what the pictures call it

    def __init__(
        self,
        encoder: nn.Module,
        patch_size: Sequence[int],
        grid_size: Sequence[int],
        mask_ratio: float,
        norm_pix_loss: bool,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: must be in (0, 1)")
        self.encoder = encoder
        self.patch_size, self.grid_size = tuple(patch_size), tuple(grid_size)
        self.in_channels: int = encoder.in_channels
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.mask_shard: tuple[int, int] = (0, 1)  # (rank, world_size) under torchrun: see random_mask
        self._pass: Callable | None = None  # forward_masked, compiled (compile_pass); None again if that failed
        self._pass_ran = False  # the compiled pass has run once (later errors are the batch's, not the compiler's)
        self.compile_failed: str | None = None  # why compile_pass fell back to eager, if it did

    @property
    def num_units(self) -> int:
        """Mask units per sample, ``L``."""
        return math.prod(self.grid_size)

    def forward_masked(self, x: torch.Tensor, m: RandomMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B C D H W`` with the drawn mask ``m`` -> ``(loss, pred B L P, mask B L)``."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, pred B L P, mask B L)`` for a fresh random mask."""
        m = self.draw_mask(x.shape[0], self.num_units, x.device, mask_ratio, generator)
        if self._pass is None:
            return self.forward_masked(x, m)
        try:
            out = self._pass(x, m)
        except Exception as e:  # noqa: BLE001 - any compiler failure: train eagerly, say why once
            if self._pass_ran:
                raise  # compiled and ran before: an error of this batch, not of the compiler
            self._pass, self.compile_failed = None, failure_reason(e)
            logger.warning("torch.compile failed (%s); training the network eagerly", self.compile_failed)
            return self.forward_masked(x, m)
        self._pass_ran = True
        return out

    def compile_pass(self) -> None:
        """Run :meth:`forward_masked` (encoder, decoder, loss; forward and backward) through ``torch.compile``.

        Why: after the matrix products, a pretraining step is bound by the memory passes between them (layer norms,
        GELU, residual adds, the norm-pix target); inductor fuses them. The mask is still drawn eagerly, so a seeded
        run masks exactly as without compilation. Each batch shape compiles once (about a minute on a CPU for
        ViT-B); if compilation fails (no C++ compiler, an unsupported operator) the eager pass runs and
        ``compile_failed`` says why. :meth:`reconstruct` stays eager (pictures are one batch of one volume).
        """
        self._pass = torch.compile(self.forward_masked, dynamic=False)
        self._pass_ran, self.compile_failed = False, None

    def draw_mask(
        self, b: int, n: int, device: torch.device, mask_ratio: float | None = None, generator=None
    ) -> RandomMask:
        """A fresh :func:`random_mask` of ``n`` units per sample at ``mask_ratio`` (default: the model's)."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        return random_mask(b, n, ratio, device, generator, self.mask_shard)

    @property
    def patch_dim(self) -> int:
        """Values in one flattened mask unit, ``P = pD pH pW C``."""
        return self.patch_size[0] * self.patch_size[1] * self.patch_size[2] * self.in_channels

    def patch_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Regression targets ``B L P``: voxel patches, per-patch normalised when ``norm_pix_loss``."""
        target = patchify(x, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6).sqrt()
        return target

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the **masked** patches only (visible patches do not count)."""
        per_patch = (pred.float() - self.patch_targets(x.float())).pow(2).mean(dim=-1)  # B L
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Full-volume views for pictures, each ``B C D H W`` in the input's intensity scale.

        ``masked``: the input with masked patches zeroed; ``reconstruction``: the prediction for every patch
        (de-normalised with each patch's own mean/std when ``norm_pix_loss``); ``pasted``: visible patches from the
        input and reconstructed masked patches; ``mask``: 1 where a voxel was masked.
        """
        m = self.draw_mask(x.shape[0], self.num_units, x.device, mask_ratio, generator)
        loss, pred, mask = self.forward_masked(x, m)
        target = patchify(x.float(), self.patch_size)
        pred = pred.float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1.0e-6).sqrt()
            pred = pred * std + mean
        m = mask.unsqueeze(-1)
        unp = lambda t: unpatchify(t, self.patch_size, self.grid_size, self.in_channels)  # noqa: E731
        return {
            "original": x.float(),
            "masked": unp(target * (1 - m)),
            "reconstruction": unp(pred),
            "pasted": unp(target * (1 - m) + pred * m),
            "mask": unp(m.expand_as(target).contiguous()),
            "loss": loss.detach(),
        }
