"""What the side-by-side benchmarks share: the flags, running one variant in a child process, and peak memory.

Each benchmark runs the MONAI reference and volmae (or two volmae variants) in separate child processes of the same
script (``--child VARIANT``), so that each one's peak memory is its own; the child prints its figures as one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from volmae.utils.runtime import cpu_info

REPO = Path(__file__).resolve().parents[1]


def add_common_args(
    ap: argparse.ArgumentParser, variants: tuple[str, ...] = ("monai", "volmae", "volmae-compile")
) -> None:
    """``--device``, ``--threads``, ``--out-json`` and the hidden ``--child VARIANT`` every benchmark takes."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--child", choices=list(variants), help=argparse.SUPPRESS)


def run_child(script: str, variant: str, args: list[str]) -> dict:
    """Run ``script --child variant *args`` and return the JSON its last stdout line holds."""
    cmd = [sys.executable, script, "--child", variant, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode:
        raise SystemExit(f"{variant} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def alternate_rounds(script: str, variants: list[str], args: list[str], rounds: int) -> dict[str, dict[str, list]]:
    """Run each variant's child (:func:`run_child`) ``rounds`` times, the variants alternating; per variant and
    figure, a list figure is concatenated over the rounds and a single figure becomes one value per round."""
    runs: dict[str, dict[str, list]] = {v: {} for v in variants}
    for _ in range(rounds):
        for variant in variants:
            for key, value in run_child(script, variant, args).items():
                runs[variant].setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return runs


def interleaved(
    calls: dict[str, Callable[[int], object]], rounds: int, sync: Callable[[], None] = lambda: None
) -> tuple[dict[str, list[float]], dict[str, list[object]]]:
    """Each call's seconds and return value per round, the calls alternating within a round (round ``i`` runs
    every ``f(i)`` in turn, ``sync()`` before each): a machine that slows down for a while slows every call of that
    round alike, so per-round ratios (:func:`median_ratio`) resolve a few per cent where separate runs cannot."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    values: dict[str, list[object]] = {k: [] for k in calls}
    for i in range(rounds):
        for k, f in calls.items():
            sync()
            t = time.perf_counter()
            values[k].append(f(i))
            times[k].append(time.perf_counter() - t)
    return times, values


def timed(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a / b`` (times of the same rounds of :func:`interleaved`)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def peak_bytes(device: torch.device) -> int:
    """Peak memory of this process: allocated GPU memory on CUDA, peak resident memory on the CPU (Linux's ``VmHWM``,
    counted from this process's exec: ``ru_maxrss`` carries the parent's peak across fork + exec, so a child started
    by a large parent would report the parent's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_or_serve(ap: argparse.ArgumentParser, child) -> argparse.Namespace | None:
    """Parse the flags; in a child process (``--child``) run ``child(args)``, print its JSON and return ``None``."""
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return None
    return args


def cpu_model() -> str:
    """The CPU's model name (else what ``platform`` knows): the CPU figures depend on it (the same VM has run on an
    AMD EPYC and on an Intel Xeon)."""
    return cpu_info("model name") or platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """Which matrix units the CPU figures could use: hosts of one model name differ (AMX exposed or not)."""
    flags = cpu_info("flags").split()
    return [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def run_meta(args: argparse.Namespace) -> dict:
    """What a results JSON records about its run: the command line, device, threads, torch and the machine."""
    meta = {
        "command": " ".join(["python", os.path.relpath(Path(sys.argv[0]).resolve(), REPO), *sys.argv[1:]]),
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
    }
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    return meta
