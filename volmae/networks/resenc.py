"""The residual-encoder CNN U-Net (nnU-Net's "ResEnc" design, Isensee et al., MICCAI 2024): a stack of residual
blocks per resolution in the encoder, one convolutional block per resolution in the decoder, no transformer.

Why this network: the 2024-2025 benchmarks (nnU-Net Revisited; Wald et al., CVPR 2025; the OpenMind benchmark) find
it at or near the top on CT and MRI, and it is the network whose masked pretraining (sparse-masked "S3D",
:mod:`volmae.networks.s3d`) pays the most consistently: encoder *and* decoder transfer into fine-tuning.

Why MONAI's blocks and not ``dynamic-network-architectures`` (the MIC-DKFZ package nnU-Net uses): that package pins
``timm``, which pins ``torchvision``, which pins one torch build, and would replace volmae's own torch on install;
MONAI's ``UnetResBlock`` (conv-norm-act-conv-norm plus a 1x1 projection on the residual path when the shape changes,
then act) and ``UnetUpBlock`` (transposed conv, concatenated skip, two conv-norm-act) are the same building blocks,
maintained, and already a volmae dependency. The differences from nnU-Net's ``ResidualEncoderUNet``: the residual
projection is a strided 1x1 conv (nnU-Net: average pooling then 1x1), and the decoder block has two convolutions
(nnU-Net: one). Plans (kernel sizes, strides, widths per stage) come from :func:`volmae.networks.dynunet.nnunet_plan`,
the rule nnU-Net's planner follows, so anisotropic spacing gets 1 x 3 x 3 kernels and delayed down-sampling.

Shapes: ``B C D H W`` in; the encoder's stage ``s`` gives ``B F_s (D / S_s) ...`` with ``S_s`` the product of the
strides up to ``s``; the network returns ``B K D H W`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock, get_conv_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from volmae.networks.patching import as_tuple, check_patch_grid

__all__ = ["ResEncEncoder", "ResEncUNet", "NORM", "ACT"]

NORM = ("instance", {"affine": True})  # nnU-Net: InstanceNorm with affine parameters
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def _per_stage(values: Sequence, n: int, name: str) -> list:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries; expected one per stage ({n})")
    return list(values)


class ResEncEncoder(nn.Module):
    """Stem (conv-norm-act) and one stage of residual blocks per resolution; no head.

    Args:
        in_channels: image channels ``C``.
        img_size: the training window ``D H W``; every axis must be divisible by the encoder's total stride.
        filters: widths per stage ``F_0 .. F_{S-1}``.
        kernel_size: per stage, an int or three (1 on an axis skips it, nnU-Net's thick-slice first stages).
        strides: per stage; stage 0's is 1 (the stem keeps full resolution), later ones 1 or 2 per axis.
        blocks: residual blocks per stage (nnU-Net ResEnc: 1, 3, 4, 6, 6, 6).
    """

    family = "resenc"
    __jit_unused_properties__ = ["num_layers", "grid_size"]

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        filters: Sequence[int],
        kernel_size: Sequence[Sequence[int] | int],
        strides: Sequence[Sequence[int] | int],
        blocks: Sequence[int],
    ) -> None:
        super().__init__()
        n = len(filters)
        if n < 2:
            raise ValueError(f"filters={list(filters)}: a U-Net needs at least 2 stages")
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels}: must be >= 1")
        kernels = [as_tuple(k, 3, "kernel_size") for k in _per_stage(kernel_size, n, "kernel_size")]
        stride = [as_tuple(s, 3, "strides") for s in _per_stage(strides, n, "strides")]
        blocks = _per_stage(blocks, n, "blocks")
        if any(b < 1 for b in blocks):
            raise ValueError(f"blocks={list(blocks)}: every stage needs at least 1 residual block")
        if stride[0] != (1, 1, 1):
            raise ValueError(f"strides[0]={list(stride[0])}: the first stage keeps full resolution (1, 1, 1)")
        self.in_channels, self.img_size = int(in_channels), as_tuple(img_size, 3, "img_size")
        self.filters, self.kernel_size, self.strides, self.blocks = list(filters), kernels, stride, list(blocks)
        total = [1, 1, 1]
        for s in stride:
            total = [t * a for t, a in zip(total, s)]
        self.total_stride: tuple[int, int, int] = tuple(total)  # type: ignore[assignment]
        check_patch_grid(
            self.img_size, self.total_stride, "the encoder's total stride"
        )  # names the nearest valid windows
        self.stem = nn.Sequential(
            get_conv_layer(3, in_channels, filters[0], kernels[0], 1, conv_only=True),
            get_norm_layer(NORM, 3, filters[0]),
            get_act_layer(ACT),
        )
        stages = []
        for s in range(n):
            c_in = filters[max(0, s - 1)]
            layers = [UnetResBlock(3, c_in, filters[s], kernels[s], stride[s], NORM, ACT)]
            layers += [UnetResBlock(3, filters[s], filters[s], kernels[s], 1, NORM, ACT) for _ in range(blocks[s] - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    @property
    def num_layers(self) -> int:
        """Depth in the sense of layer-wise learning-rate decay (:mod:`volmae.utils.optim`): the stem and each
        stage."""
        return len(self.stages) + 1

    def layer_id(self, name: str) -> int:
        """Stem 0, stage ``s`` ``s + 1``."""
        return int(name.split(".")[1]) + 1 if name.startswith("stages.") else 0

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """The bottleneck grid of the training window, ``img_size / total_stride``."""
        return tuple(i // t for i, t in zip(self.img_size, self.total_stride))  # type: ignore[return-value]

    def check_input(self, x: torch.Tensor) -> None:
        """``x`` must be ``B C D H W`` with this encoder's channels and sizes its total stride divides (TorchScript
        compatible: the bundles export with ``torch.jit.script``)."""
        s = self.total_stride
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input B x {self.in_channels} x D x H x W, got {list(x.shape)}")
        if x.shape[2] % s[0] != 0 or x.shape[3] % s[1] != 0 or x.shape[4] % s[2] != 0:
            raise ValueError(
                f"input of {list(x.shape[2:])} voxels: each size must be a multiple of the encoder's total stride "
                f"{list(s)} (use sliding-window inference with such a window)"
            )

    def forward_intermediates(self, x: torch.Tensor, indices: list[int] | None = None) -> list[torch.Tensor]:
        """``B C D H W`` -> the outputs of the stages in ``indices`` (default all, finest first)."""
        self.check_input(x)
        out: list[torch.Tensor] = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            out.append(y)
        if indices is None:
            return out
        return [out[i] for i in indices]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W`` -> the bottleneck features ``B F_{S-1} d h w``."""
        return self.forward_intermediates(x)[-1]

    forward = forward_features


class ResEncUNet(nn.Module):
    """A U-Net over a :class:`ResEncEncoder`: per finer stage, a transposed convolution, the concatenated skip and a
    conv block; a 1x1 head. Fully convolutional: it segments any window its total stride divides."""

    def __init__(self, encoder: ResEncEncoder, out_channels: int) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels={out_channels}: must be >= 1")
        self.encoder, self.out_channels = encoder, int(out_channels)
        f, k, s = encoder.filters, encoder.kernel_size, encoder.strides
        # in decoding order: ups[j] brings stage n - 1 - j to the resolution of stage n - 2 - j and adds its skip
        n = len(f)
        self.ups = nn.ModuleList(
            UnetUpBlock(3, f[i + 1], f[i], k[i], 1, s[i + 1], NORM, ACT) for i in range(n - 2, -1, -1)
        )
        self.head = UnetOutBlock(3, f[0], out_channels)

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.encoder.img_size

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Stage outputs (finest first) -> ``B F_0 D H W`` decoder features (before the head)."""
        n = len(features)
        y = features[n - 1]
        for j, up in enumerate(self.ups):
            y = up(y, features[n - 2 - j])
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B C D H W`` -> ``B K D H W`` logits."""
        return self.head(self.decode(self.encoder.forward_intermediates(x)))
