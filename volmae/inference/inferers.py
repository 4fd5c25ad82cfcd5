"""A MONAI sliding-window inferer that can run the network under CPU bf16 autocast: the bundles' ``inferer`` (MONAI
Label runs it; volmae's own inference reads its settings).

Why not MONAI's own: MONAI's engines autocast with ``torch.autocast("cuda")`` when ``amp=True``, so ``amp`` does
nothing on the CPU, where bf16 pays on CPUs with AMX or AMD Zen 4+
(docs/performance.md: UNETR-B sliding windows 1.33x, a UNETR-Ti fine-tuning step 1.53-1.70x over fp32). This
subclass keeps MONAI's inferer, its arguments and config ids (MONAI Label reads ``inferer#roi_size`` and friends)
and adds one flag, ``cpu_bf16``: the network (not the stitching, not the loss) runs under
``torch.autocast("cpu", torch.bfloat16)`` and its outputs come back as float32, as
:class:`~volmae.inference.Predictor` does for ``volmae-infer --cpu-bf16``. Off (the default) it is MONAI's
inferer unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

from volmae.errors import ConfigError
from volmae.utils.flags import parse_flag
from volmae.utils.runtime import autocast, check_cpu_bf16

__all__ = ["Bf16SlidingWindowInferer", "cpu_bf16_network"]


def _to_float(out: Any) -> Any:
    """float32 copies of the floating tensors in a network output (a tensor, a sequence or a mapping of them)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, Mapping):
        return {k: _to_float(v) for k, v in out.items()}
    if isinstance(out, Sequence) and not isinstance(out, str):
        return type(out)(_to_float(v) for v in out)
    return out


def cpu_bf16_network(network: Callable[..., Any]) -> Callable[..., Any]:
    """``network`` run under CPU bf16 autocast, its outputs float32 (so stitching and losses stay fp32)."""
    cpu = torch.device("cpu")

    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.device.type != "cpu":
            raise ConfigError(f"cpu_bf16=True with inputs on {x.device}: it is CPU autocast; on CUDA use amp")
        with autocast(cpu, True, cpu_bf16=True):
            return _to_float(network(x, *args, **kwargs))

    return run


class _CpuBf16:
    """Mixin: ``cpu_bf16`` (bool) wraps the network the inferer calls with :func:`cpu_bf16_network`."""

    def _set_cpu_bf16(self, cpu_bf16: bool | str) -> None:
        cpu_bf16 = parse_flag("cpu_bf16", cpu_bf16)  # `--cpu_bf16 true` arrives as a string
        if cpu_bf16:
            check_cpu_bf16(torch.device("cpu"), True)  # warns where bf16 likely runs slower
        self.cpu_bf16 = cpu_bf16

    def _network(self, network: Callable[..., Any]) -> Callable[..., Any]:
        return cpu_bf16_network(network) if self.cpu_bf16 else network


class Bf16SlidingWindowInferer(_CpuBf16, SlidingWindowInferer):
    """MONAI's :class:`~monai.inferers.SlidingWindowInferer` (same arguments), with ``cpu_bf16`` (module
    docstring): the windows' network calls autocast, the gaussian-weighted stitching stays float32."""

    def __init__(self, *args: Any, cpu_bf16: bool | str = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._set_cpu_bf16(cpu_bf16)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().__call__(inputs, self._network(network), *args, **kwargs)
