"""Segmentation training step on the CPU, PyTorch's default memory layout vs channels-last (``--no-channels-last``
vs the default of ``volmae-train``), measured side by side in one run.

A step is what ``volmae-train`` runs: forward of ``build_segmenter(preset)``, MONAI's ``DiceCELoss``, backward and the
engine's fused AdamW, on one batch of random crops of the real MNI152 T1 (``$VOLMAE_DATA/mni152_nilearn``, z-scored;
else smoothed noise) with random 3-class labels. ``channels_last`` converts the network and each batch with
``volmae.utils.runtime.channels_last`` / ``as_layout``. Each variant runs in its own child process; the two alternate
``--rounds`` times; a round times ``--steps`` steps after ``--warmup``. Printed: median step time, peak RSS, mean
loss (equal to float rounding) and the ratio plain / channels-last; ``--cpu-bf16`` adds ``channels_last_bf16``, the
step under ``torch.autocast("cpu", torch.bfloat16)`` as ``volmae-train --cpu-bf16`` runs it, and the ratio
channels-last / channels-last bf16. Run by hand:

    python benchmarks/train_step_layout.py [--config vit-tiny:40x56x40:4 nnformer-tiny:48x64x48:4 vit-base:96:2]
                                           [--cpu-bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from common import add_common_args, alternate_rounds, parse_or_serve, peak_bytes, run_meta
from mae_step import batches, parse_config

VARIANTS = ("plain", "channels_last", "channels_last_bf16")


def child(args) -> dict:
    from monai.losses import DiceCELoss

    from volmae.networks.registry import build_segmenter
    from volmae.utils.optim import adamw, param_groups
    from volmae.utils.runtime import as_layout, channels_last

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset, roi, batch = parse_config(args.child_config)
    torch.manual_seed(0)
    net = build_segmenter(preset, 1, 3, roi).model.to(device)
    on = channels_last(net, device, args.child != "plain")
    if args.child != "plain" and not on:
        raise RuntimeError(f"channels-last is not applied on {device}")
    opt = adamw(param_groups(net, 1e-5), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    gen = torch.Generator().manual_seed(1)
    data = [
        (as_layout(x.to(device), on), torch.randint(0, 3, x.shape, generator=gen).to(device))
        for x in batches(roi, batch, args.warmup + args.steps)
    ]

    bf16 = args.child == "channels_last_bf16"  # what volmae-train --cpu-bf16 does

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = net(x)
            loss = loss_fn(out[0] if isinstance(out, list | tuple) else out, y)
        loss.backward()
        opt.step()
        return float(loss)

    for x, y in data[: args.warmup]:
        step(x, y)
    times, losses = [], []
    for x, y in data[args.warmup :]:
        t = time.perf_counter()
        losses.append(step(x, y))
        times.append(time.perf_counter() - t)
    return {"times": times, "losses": losses, "peak_bytes": peak_bytes(device)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["vit-tiny:40x56x40:4", "nnformer-tiny:48x64x48:4", "vit-base:96:2"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--cpu-bf16", action="store_true", help="add channels_last_bf16: channels-last under CPU bf16 autocast"
    )
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    add_common_args(ap, variants=VARIANTS)
    args = parse_or_serve(ap, child)
    if args is None:
        return 0
    print("| config | variant | step s (median) | peak RSS GiB | mean loss |\n|---|---|---|---|---|")
    results = []
    for config in args.config:
        child_args = ["--child-config", config, "--device", args.device, "--threads", str(args.threads)]
        child_args += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        variants = list(VARIANTS) if args.cpu_bf16 else list(VARIANTS[:2])
        runs = alternate_rounds(__file__, variants, child_args, args.rounds)
        row = {"config": config}
        for variant, r in runs.items():
            med, peak = statistics.median(r["times"]), max(r["peak_bytes"])
            row[variant] = {**r, "step_s_median": med, "peak_gib": peak / 2**30}
            print(f"| {config} | {variant} | {med:.3f} | {peak / 2**30:.2f} | {statistics.mean(r['losses']):.4f} |")
        row["speedup"] = row["plain"]["step_s_median"] / row["channels_last"]["step_s_median"]
        print(f"| {config} | plain / channels-last | **{row['speedup']:.2f}x** | | |")
        if args.cpu_bf16:
            row["speedup_bf16"] = row["channels_last"]["step_s_median"] / row["channels_last_bf16"]["step_s_median"]
            print(f"| {config} | channels-last / channels-last bf16 | **{row['speedup_bf16']:.2f}x** | | |")
        results.append(row)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"meta": run_meta(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
