"""Linear layers whose forward product runs through oneDNN when training on the CPU.

Why: in fp32 on the CPU, ``torch.nn.functional.linear`` hands ``x W^T`` to MKL's GEMM with the weight transposed.
With 2 threads and few rows (an MAE encoder sees only its visible tokens: ViT-B on a batch of two 96^3 crops
multiplies 108 rows), that product reaches 42-53 GFLOP/s on this project's reference CPU (AMD EPYC, 2 cores), where
oneDNN's inner-product primitive, which PyTorch ships (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor
calls for CPU linears), reaches 63-68 GFLOP/s on the same shapes. The gain shrinks as the rows grow and turns
into a loss for narrow layers (192 features: ``vit-tiny``), so only layers with at least ``min_features`` (384)
inputs and outputs are turned (``benchmarks/linear_gemm.py`` measures the grid). The backward products
(``dX = dY W`` and ``dW = dY^T X``) stay on MKL, the faster of the two there. MONAI has no such layer;
``torch.compile`` reaches the same kernel but costs a minute of compilation per shape and gave no net gain for
the whole step on that CPU (``docs/performance.md``).

Where it pays depends on the CPU, likely because MKL tunes its GEMM for Intel processors: on an Intel Xeon
(Emerald Rapids, AVX-512, 2 cores) oneDNN was level with MKL at best (forward + backward 0.88-1.02x on the layers
that would be turned; ``benchmarks/results/linear_gemm_cpu_xeon.md``) and the ViT-B MAE step no faster. So by
default (``enabled=None``) layers are turned on AMD CPUs only, where it was measured to win; ``enabled=True`` turns
them on any CPU.

Only the kernel changes: results equal ``F.linear``'s to float rounding, the module stays an ``nn.Linear`` (same
parameters, state-dict keys and checkpoints), and every input the kernel does not cover (not fp32, not on the CPU,
under autocast, while ``torch.compile`` traces) goes to ``F.linear`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from volmae.utils.runtime import cpu_info

__all__ = ["OneDNNLinear", "cpu_vendor", "onednn_available", "onednn_linear", "onednn_pays", "use_onednn_linears"]


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN and its linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's ``vendor_id`` (``AuthenticAMD``, ``GenuineIntel``, ...); ``""`` where there is none (not Linux, or
    not x86)."""
    return cpu_info("vendor_id", cpuinfo)


def onednn_pays() -> bool:
    """The default of :func:`use_onednn_linears`: on AMD CPUs, where oneDNN's forward products beat MKL's (measured on
    Zen 3); not on Intel CPUs, where MKL's were as fast or faster (Emerald Rapids), nor on others (not measured)."""
    return cpu_vendor() == "AuthenticAMD"


class _OneDNNLinearFn(torch.autograd.Function):
    """``y = x W^T + b`` with the product on oneDNN; the gradients with MKL's ``mm`` (``... K -> ... N``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_rows = grad.reshape(-1, grad.shape[-1])  # M N, M = all leading dimensions
        grad_x = grad.matmul(weight) if need_x else None  # ... N @ N K
        grad_w = grad_rows.t().mm(x.reshape(-1, x.shape[-1])) if need_w else None  # N M @ M K
        grad_b = grad_rows.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with the forward product on oneDNN where it applies (fp32 CPU tensors, eager, no autocast)."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.ndim < 2
        or torch.is_autocast_enabled("cpu")
        or torch.compiler.is_compiling()
    ):
        return F.linear(x, weight, bias)
    return _OneDNNLinearFn.apply(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` computed by :func:`onednn_linear`; made from one in place by :func:`use_onednn_linears`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)


def use_onednn_linears(
    model: nn.Module, device: torch.device, enabled: bool | None = None, min_features: int = 384
) -> int:
    """Turn each plain ``nn.Linear`` of ``model`` with ``min_features`` or more inputs and outputs into an
    :class:`OneDNNLinear`, for training on the CPU; ``enabled=None`` where it pays (:func:`onednn_pays`).

    Returns how many it turned (0 when ``device`` is not the CPU, ``enabled`` is False or oneDNN is missing). The
    modules keep their parameters and names; only their class changes, so optimizers and checkpoints are unaffected.
    Subclasses of ``nn.Linear`` (e.g. quantised or LoRA layers) are left alone: their forward is their own.
    """
    if min_features < 1:
        raise ValueError(f"min_features={min_features}: must be >= 1")
    if device.type != "cpu" or not onednn_available():
        return 0
    if not (onednn_pays() if enabled is None else enabled):  # the CPU's vendor is read only for a CPU model
        return 0
    turned = 0
    for m in model.modules():
        if type(m) is nn.Linear and min(m.in_features, m.out_features) >= min_features:
            m.__class__ = OneDNNLinear
            turned += 1
    return turned
