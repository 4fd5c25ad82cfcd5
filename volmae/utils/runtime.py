"""Device selection, automatic mixed precision and seeding."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import sys

import numpy as np
import torch

from volmae.errors import ConfigError

__all__ = [
    "resolve_device",
    "autocast",
    "make_scaler",
    "seed_all",
    "sync",
    "rss_bytes",
    "channels_last",
    "as_layout",
    "match_state_layouts",
    "failure_reason",
    "cpu_info",
    "cpu_has_bf16_units",
    "check_cpu_bf16",
]

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; ``"cuda:N"`` checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise ConfigError(f"device={device!r}: only CPU and CUDA devices are supported")
    return dev


def amp_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, else fp16 on CUDA; on the CPU ``None`` (fp32), or bf16 with
    ``cpu_bf16`` (inference only: see :func:`cpu_has_bf16_units`)."""
    if device.type != "cuda":
        return torch.bfloat16 if cpu_bf16 else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool, cpu_bf16: bool = False):
    """Autocast as :func:`amp_dtype` says (``enabled=False``: none, whatever the device)."""
    dtype = amp_dtype(device, cpu_bf16) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 matrices fast enough for bf16 autocast to pay: AMX (``amx_bf16``, Intel
    Sapphire Rapids and later), or an AMD CPU with ``avx512_bf16`` (Zen 4 and later).

    Why it matters, measured on 2 cores (docs/performance.md): a ViT-B MAE step in bf16 ran 1.24x faster than in fp32
    with AMX and 1.59x on an AMD EPYC Zen 4, at the same loss; on an Intel CPU with ``avx512_bf16`` but AMX hidden
    (Emerald Rapids under a hypervisor) it ran at 0.59x. So volmae stays fp32 on the CPU unless asked
    (``cpu_bf16``), and warns when asked on a CPU outside this rule."""
    flags = cpu_info("flags", cpuinfo).split()
    amd_bf16 = "avx512_bf16" in flags and cpu_info("vendor_id", cpuinfo) == "AuthenticAMD"
    return "amx_bf16" in flags or amd_bf16


def check_cpu_bf16(device: torch.device, cpu_bf16: bool) -> None:
    """Refuse ``cpu_bf16`` off the CPU; warn where :func:`cpu_has_bf16_units` says bf16 will likely run slower."""
    if not cpu_bf16:
        return
    if device.type != "cpu":
        raise ConfigError(f"cpu_bf16=True on device {device}: it is CPU autocast; on CUDA amp=True autocasts")
    if not cpu_has_bf16_units():
        logger.warning(
            "cpu_bf16: this CPU has neither AMX nor AMD's avx512_bf16; bf16 will likely run slower than fp32"
        )


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A gradient scaler that is active only for fp16 autocast (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=enabled and amp_dtype(device) == torch.float16)


def channels_last(model: torch.nn.Module, device: torch.device, enabled: bool = True) -> bool:
    """Put ``model``'s weights in channels-last memory (``B D H W C``, ``torch.channels_last_3d``) for training on the
    CPU; returns whether it did (then feed inputs through :func:`as_layout`).

    Why: oneDNN's 3D convolutions, above all their backward pass, run faster on channels-last tensors than on
    PyTorch's default ``B C D H W`` strides: a training step measured 1.1-1.3x faster on 2 CPU cores
    (``benchmarks/train_step_layout.py``: UNETR ``vit-tiny`` at 40 x 56 x 40 1.30x, ``nnformer-tiny`` at 48 x 64 x
    48 1.14x, UNETR-B at 96^3 1.10x), with equal results to float rounding (the presets use no dropout; a random
    mask drawn over a tensor follows its memory order, so with dropout the two layouts differ as two seeds would).
    Only the layout in memory changes: shapes, state-dict keys and values are the same, and checkpoints load into
    either layout (:func:`match_state_layouts` re-lays resumed optimizer moments). Not applied on CUDA (unmeasured
    there: no GPU was available) nor to models without 3D convolutions.
    """
    if not enabled or device.type != "cpu":
        return False
    if not any(isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d) for m in model.modules()):
        return False
    model.to(memory_format=torch.channels_last_3d)
    return True


def as_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A ``B C D H W`` batch in channels-last memory when ``channels_last`` (see :func:`channels_last`)."""
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last and x.ndim == 5 else x


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter optimizer state tensor its parameter's memory layout.

    A state loaded from a checkpoint keeps the strides it was saved with; the fused AdamW kernel walks a parameter
    and its moments as flat memory, so moments saved from a plain-layout run and resumed on channels-last weights
    (or the reverse) would be updated element-for-wrong-element without any error (checked: a wrong update)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def failure_reason(e: BaseException) -> str:
    """``"TypeName: first line of the message"``: why an optional speed-up (a compilation) fell back, in one line."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (CUDA); nothing on the CPU. For wall-clock timing of device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``); elsewhere its peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.cache
def cpu_info(field: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first value of ``field`` (``vendor_id``, ``model name``, ...) in ``cpuinfo``; ``""`` where there is none
    (not Linux, or a field this processor does not list)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""
