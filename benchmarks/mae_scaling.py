"""How MAE pretraining cost grows with ROI size, patch size and mask ratio: FLOPs and activation memory counted
exactly on the meta device (no compute, so the machine's load does not matter), and step times measured at small
sizes to turn FLOPs into seconds. The model and its extrapolation are in ``docs/scaling.md``.

Per configuration (batch 1): tokens ``L``, visible tokens ``K``, FLOPs of one training step (forward + backward,
``torch.utils.flop_counter``), activation memory (bytes of the non-parameter tensors autograd saves for backward,
``torch.autograd.graph.saved_tensors_hooks``) and the fixed memory of weights + gradients + AdamW moments (16 bytes
per parameter in fp32). With ``--calibrate``, also the measured CPU step time of the small configurations and the
FLOP rate it implies. Run by hand:

    python benchmarks/mae_scaling.py [--calibrate] [--threads 2] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from volmae.networks import build_mae

# (preset, ROI, patch, mask ratio): ROI and patch sweeps at the SelfMedMAE mask ratio, then a mask-ratio sweep
GRID = [
    *[("vit-base", r, 16, 0.75) for r in (64, 96, 128, 160, 192)],
    ("vit-base", 96, 8, 0.75),
    ("vit-base", 128, 8, 0.75),
    *[("vit-base", 96, 16, m) for m in (0.5, 0.6, 0.9)],
    ("vit-tiny", (40, 56, 40), 8, 0.75),
    ("vit-tiny", 96, 8, 0.75),
]
CALIBRATE = [("vit-tiny", (40, 56, 40), 8, 0.75), ("vit-base", 64, 16, 0.75), ("vit-base", 96, 16, 0.75)]


def roi3(roi) -> tuple[int, int, int]:
    return tuple(roi) if isinstance(roi, tuple) else (roi, roi, roi)


def count(preset: str, roi, patch: int, ratio: float) -> dict:
    """Exact FLOPs and saved-activation bytes of one batch-1 training step, on the meta device."""
    with torch.device("meta"):
        model = build_mae(preset, 1, roi3(roi), patch_size=patch, mask_ratio=ratio).model
    params = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    saved = 0
    attention: tuple[int, int] | None = None  # (Lq, Lk) while inside scaled_dot_product_attention

    def pack(t: torch.Tensor):
        nonlocal saved
        base = t._base if t._base is not None else t
        if id(t) in params or id(base) in params or isinstance(base, nn.Parameter):
            return t
        if attention is not None and t.ndim >= 2 and tuple(t.shape[-2:]) == attention:
            return t  # an L x L attention map: saved on meta (math kernel), never by the flash kernels used for real
        saved += t.numel() * t.element_size()
        return t

    sdpa = F.scaled_dot_product_attention

    def flash_like(query, key, value, *a, **kw):
        """On meta, SDPA runs its math kernel, which saves the attention maps; real CPU / GPU runs use flash
        kernels that save q, k, v, the output and a log-sum-exp instead. Count those."""
        nonlocal attention, saved
        attention = (query.shape[-2], key.shape[-2])
        try:
            out = sdpa(query, key, value, *a, **kw)
        finally:
            attention = None
        saved += out.numel() * out.element_size() + out[..., 0].numel() * 4  # output + fp32 log-sum-exp
        return out

    x = torch.empty(1, 1, *roi3(roi), device="meta")
    F.scaled_dot_product_attention = flash_like
    try:
        with FlopCounterMode(display=False) as fc, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)[0].backward()
    finally:
        F.scaled_dot_product_attention = sdpa
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = model.encoder.num_tokens
    return {
        "preset": preset,
        "roi": list(roi3(roi)),
        "patch": patch,
        "mask_ratio": ratio,
        "tokens": tokens,
        "visible": max(1, round(tokens * (1 - ratio))),
        "gflops_per_step": fc.get_total_flops() / 1e9,
        "activation_gib": saved / 2**30,
        "weights_grads_adam_gib": 16 * n_params / 2**30,
    }


def measure(preset: str, roi, patch: int, ratio: float, steps: int = 5) -> float:
    """Median CPU seconds of a batch-1 step (forward, backward, fused AdamW)."""
    from volmae.utils.optim import adamw, param_groups

    torch.manual_seed(0)
    model = build_mae(preset, 1, roi3(roi), patch_size=patch, mask_ratio=ratio).model
    opt = adamw(param_groups(model, 0.05), lr=1e-4)
    x = torch.randn(1, 1, *roi3(roi))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(x)[0].backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibrate", action="store_true", help="also time the small configurations on this CPU")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [count(*cfg) for cfg in GRID]
    print("| preset | ROI | patch | mask | L | K | GFLOP / step | activations GiB | weights+grads+AdamW GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {'x'.join(map(str, r['roi']))} | {r['patch']} | {r['mask_ratio']} | {r['tokens']} | "
            f"{r['visible']} | {r['gflops_per_step']:.1f} | {r['activation_gib']:.3f} | "
            f"{r['weights_grads_adam_gib']:.2f} |"
        )
    calib = []
    if args.calibrate:
        print(f"\n| calibration ({args.threads} threads) | step s | GFLOP/s |\n|---|---|---|")
        for cfg in CALIBRATE:
            gflop = count(*cfg)["gflops_per_step"]
            sec = measure(*cfg)
            calib.append({"config": list(map(str, cfg)), "step_s": sec, "gflop_per_s": gflop / sec})
            print(
                f"| {cfg[0]} {'x'.join(map(str, roi3(cfg[1])))} p{cfg[2]} m{cfg[3]} | {sec:.3f} | {gflop / sec:.0f} |"
            )
    if args.out_json:
        cmd = " ".join(["python", "benchmarks/mae_scaling.py", *sys.argv[1:]])
        Path(args.out_json).write_text(json.dumps({"command": cmd, "rows": rows, "calibration": calib}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
