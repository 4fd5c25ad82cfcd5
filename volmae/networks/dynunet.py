"""The plain CNN peer: MONAI's ``DynUNet`` with an nnU-Net-style plan of kernels and strides for the ROI.

Not a volmae encoder (no pretraining, no ``forward_features``): it is the baseline the label-efficiency study
(:mod:`volmae.study`) trains with the same engine, data and budget as the transformers, to answer "does
pretraining close the gap to a well-configured CNN?". The network is MONAI's own; volmae adds only what MONAI
leaves to the user, the plan (:func:`nnunet_plan`, the rule of nnU-Net's planner and of MONAI's DynUNet tutorial):

* down-sample an axis (stride 2) while it stays at least ``min_size`` voxels and even, and while its spacing is
  at most twice the finest axis's (anisotropic axes wait until the others have caught up); at most
  ``max_levels`` down-samplings;
* kernel 3 on every axis, except 1 on an axis whose spacing is still more than twice the finest (nnU-Net's 1 x 3 x 3
  first stages on thick-slice scans);
* filters ``base_filters * 2^level``, capped at ``max_filters`` (nnU-Net: 32 .. 320).

Deep supervision is off: the peer is the plain U-Net (``DynUNet(deep_supervision=False)``), and every network in
the study then trains on the same single-output DiceCE loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import DynUNet

from volmae.networks.patching import as_tuple

__all__ = ["nnunet_plan", "build_dynunet_network", "DYNUNET_KEYS"]

# the DynUNet constructor arguments a model file stores (its NetworkConfig.arguments)
DYNUNET_KEYS = ("in_channels", "out_channels", "kernel_size", "strides", "upsample_kernel_size", "filters", "res_block")


def nnunet_plan(
    img_size: Sequence[int] | int,
    spacing: Sequence[float] | float = 1.0,
    min_size: int = 4,
    max_levels: int = 5,
    base_filters: int = 32,
    max_filters: int = 320,
) -> dict[str, list]:
    """``kernel_size``, ``strides`` (both per level, level 0 the input convolution) and ``filters`` for an ROI of
    ``img_size`` (``D H W`` voxels) at ``spacing`` (mm per axis)."""
    size = list(as_tuple(img_size, 3, "img_size"))
    space = [float(spacing)] * 3 if isinstance(spacing, int | float) else [float(s) for s in spacing]
    if len(space) != 3 or any(s <= 0 for s in space):
        raise ValueError(f"spacing={spacing}: expected three positive spacings")
    if min_size < 1 or max_levels < 1:
        raise ValueError(f"min_size={min_size}, max_levels={max_levels}: must be >= 1")

    def kernel() -> list[int]:
        return [3 if s <= 2 * min(space) else 1 for s in space]

    kernels, strides = [kernel()], [[1, 1, 1]]
    while len(strides) <= max_levels:
        stride = [
            2 if sz % 2 == 0 and sz // 2 >= min_size and sp <= 2 * min(space) else 1 for sz, sp in zip(size, space)
        ]
        if stride == [1, 1, 1]:
            break
        size = [sz // st for sz, st in zip(size, stride)]
        space = [sp * st for sp, st in zip(space, stride)]
        kernels.append(kernel())
        strides.append(stride)
    if len(strides) < 2:
        raise ValueError(f"img_size={img_size}: too small to down-sample once (every axis < {2 * min_size} or odd)")
    filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    return {"kernel_size": kernels, "strides": strides, "filters": filters}


def build_dynunet_network(**kwargs: Any) -> torch.nn.Module:
    """``DynUNet`` (3D, instance norm, leaky ReLU: MONAI's defaults) from the stored arguments ``DYNUNET_KEYS``."""
    unknown = set(kwargs) - set(DYNUNET_KEYS)
    if unknown:
        raise ValueError(f"unknown DynUNet arguments {sorted(unknown)}; expected {DYNUNET_KEYS}")
    return DynUNet(spatial_dims=3, deep_supervision=False, **kwargs)
