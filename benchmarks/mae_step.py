"""MAE pretraining step, volmae vs MONAI's ``MaskedAutoEncoderViT``, measured side by side in one run.

A step is forward + backward + optimizer on one batch. The reference is what a MONAI user writes:
``monai.networks.nets.MaskedAutoEncoderViT`` with volmae's sizes (encoder, SelfMedMAE decoder, qkv bias), the
norm-pix loss on masked patches in a few lines of einops, and ``torch.optim.AdamW(model.parameters())``, in fp32.
volmae is ``build_mae(preset)`` with the optimizer its engine makes (``volmae.utils.optim.adamw``) and, on CUDA, the
engine's autocast (bf16); on the CPU its linear layers are what the engine makes them (``volmae.utils.onednn``:
forward products on oneDNN on AMD CPUs, MKL elsewhere), and ``volmae-mkl`` / ``volmae-onednn`` force each of the two
(``--no-onednn-linear`` / ``--onednn-linear``; one of them is the same model as ``volmae``, a control of the noise);
``volmae-compile`` is volmae with ``volmae-pretrain --compile``
(``MaskedReconstruction.compile_pass``), its one-off compilation timed apart (the first warm-up step); with
``--cpu-bf16``, ``volmae-bf16`` is volmae under ``torch.autocast("cpu", torch.bfloat16)`` (not what the engine
does on the CPU: whether it pays depends on the CPU's bf16 units, AMX above all). Both start
from the same weights (volmae's, copied into MONAI's layout; MONAI's extra class token stays) and see the same
batches: random crops of the real MNI152 T1 (``$VOLMAE_DATA/mni152_nilearn``, z-scored) or, without it, smoothed
noise. Each variant runs in its own child process (clean peak memory), the variants alternating ``--rounds`` times; a
round times ``--steps`` steps after ``--warmup``.

Printed per configuration and variant: median step time, volumes/s, peak memory (CPU: the child's peak RSS; CUDA:
peak allocated), mean loss over the timed steps (equal objectives: the two should agree within a few %), the ratios
MONAI / each volmae variant, and on CUDA the achieved TFLOP/s (FLOPs of one step counted by
``torch.utils.flop_counter``). Then, unless ``--paired-steps 0``, every variant once more in one process with
their steps interleaved (MONAI, volmae, volmae-mkl, volmae-onednn, volmae-compile, MONAI, ...; the compilation in the
warm-up) and the median over those rounds of ``time(MONAI) / time(variant)``: on a shared machine whose speed drifts
by tens of per cent within minutes, this pairing resolves a few per cent that the separate processes cannot.
Run by hand:

    python benchmarks/mae_step.py [--config vit-base:96:2 vit-tiny:40x56x40:4] [--device cpu] [--no-compile]
                                  [--cpu-bf16] [--paired-steps 10] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    add_common_args,
    alternate_rounds,
    interleaved,
    median_ratio,
    parse_or_serve,
    peak_bytes,
    run_child,
    run_meta,
)
from einops import rearrange

from volmae.utils.runtime import sync


def parse_config(text: str) -> tuple[str, tuple[int, int, int], int]:
    """``preset:ROI:batch`` with ROI ``96`` or ``40x56x40``."""
    try:
        preset, roi, batch = text.split(":")
        sizes = [int(s) for s in roi.split("x")]
        return preset, tuple(sizes * 3 if len(sizes) == 1 else sizes), int(batch)
    except ValueError:
        raise SystemExit(f"--config {text!r}: expected preset:ROI:batch, e.g. vit-base:96:2") from None


def batches(roi, batch: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` batches ``B 1 roi`` of random crops of the real MNI152 T1 (z-scored), or of smoothed noise."""
    from scipy import ndimage

    from volmae.data.paths import dataset_path

    rng = np.random.default_rng(seed)
    src = dataset_path("mni152_nilearn")
    if src is not None:
        import nibabel as nib

        vol = np.asarray(nib.load(src / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").dataobj, np.float32)
        vol = (vol - vol[vol > 0].mean()) / vol[vol > 0].std()
    else:
        vol = ndimage.gaussian_filter(rng.normal(size=[2 * r for r in roi]).astype(np.float32), 3)
    out = []
    for _ in range(n):
        crops = []
        for _ in range(batch):
            o = [rng.integers(0, s - r + 1) for s, r in zip(vol.shape, roi)]
            crops.append(vol[o[0] : o[0] + roi[0], o[1] : o[1] + roi[1], o[2] : o[2] + roi[2]])
        out.append(torch.from_numpy(np.stack(crops)[:, None].copy()))
    return out


def reference_model(ours):
    """MONAI's MaskedAutoEncoderViT with the sizes of volmae's MAE ``ours`` and its weights."""
    from monai.networks.nets import MaskedAutoEncoderViT

    enc = ours.encoder
    blk = enc.blocks[0]
    dec = ours.decoder_blocks[0]
    ref = MaskedAutoEncoderViT(
        enc.in_channels,
        enc.img_size,
        enc.patch_size,
        hidden_size=enc.hidden_size,
        mlp_dim=blk.mlp.linear1.out_features,
        num_layers=enc.num_layers,
        num_heads=blk.attn.num_heads,
        masking_ratio=ours.mask_ratio,
        decoder_hidden_size=ours.decoder_embed.out_features,
        decoder_mlp_dim=dec.mlp.linear1.out_features,
        decoder_num_layers=len(ours.decoder_blocks),
        decoder_num_heads=dec.attn.num_heads,
        qkv_bias=True,
    )
    src = ours.state_dict()
    mapped = {}
    for k, v in src.items():
        k = k.removeprefix("encoder.")
        k = k.replace("norm.", f"blocks.{enc.num_layers}.", 1) if k.startswith("norm.") else k
        k = k.replace("decoder_norm.", f"decoder_blocks.{len(ours.decoder_blocks)}.")
        k = {"mask_token": "mask_tokens", "decoder_pos_embed": "decoder_pos_embedding"}.get(k, k)
        mapped[k] = v
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    if set(missing) - {"cls_token"} or unexpected:
        raise RuntimeError(f"weight mapping failed: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return ref


def reference_loss(model, x: torch.Tensor) -> torch.Tensor:
    """The norm-pix masked loss as a MONAI user writes it (MONAI's MAE returns predictions and the mask only)."""
    pred, mask = model(x)
    p1, p2, p3 = model.patch_size
    target = rearrange(x, "b c (d p1) (h p2) (w p3) -> b (d h w) (p1 p2 p3 c)", p1=p1, p2=p2, p3=p3)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def make_step(variant: str, preset: str, roi, device: torch.device):
    """``(model, step)`` of one variant, from volmae's seeded weights; ``step(x)`` runs one optimizer step and
    returns the loss."""
    from volmae.networks import build_mae
    from volmae.utils.onednn import use_onednn_linears
    from volmae.utils.optim import adamw, param_groups
    from volmae.utils.runtime import autocast

    torch.manual_seed(0)
    ours = build_mae(preset, 1, roi).model
    if variant == "monai":
        model = reference_model(ours).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def loss_of(x):
            return reference_loss(model, x)

    else:
        model = ours.to(device)
        forced = {"volmae-mkl": False, "volmae-onednn": True}
        use_onednn_linears(model, device, forced.get(variant))  # None: as volmae-pretrain does on this CPU
        opt = adamw(param_groups(model, 0.05), lr=1e-4)
        if variant == "volmae-compile":
            model.compile_pass()

        def loss_of(x):
            if variant == "volmae-bf16":  # CPU bf16 autocast, which volmae's engine does not use (see main's help)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(x)[0]
            with autocast(device, device.type == "cuda"):
                return model(x)[0]

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(x)
        loss.backward()
        opt.step()
        return loss

    model.train()
    return model, step


def paired_child(args, device: torch.device, preset: str, roi, batch: int) -> dict:
    """Every variant in this one process, their steps interleaved (A B C A B C ...): a machine that slows
    down for a while slows each variant's step of that round alike, so ``time(MONAI) / time(variant)`` per round
    resolves a few per cent where separate processes minutes apart cannot. (Peak memory is not per variant here.)"""
    variants = args.paired_variants.split(",")
    steps = {v: make_step(v, preset, roi, device)[1] for v in variants}
    data = [b.to(device) for b in batches(roi, batch, args.warmup + args.steps)]
    for x in data[: args.warmup]:
        for step in steps.values():
            step(x)
    timed = data[args.warmup :]
    calls = {v: (lambda i, step=step: float(step(timed[i]))) for v, step in steps.items()}  # float(): waits too
    times, losses = interleaved(calls, len(timed), lambda: sync(device))
    return {"paired_times": times, "paired_losses": losses}


def child(args) -> dict:
    """One variant in this process (or, ``--child paired``, all of them interleaved): build, warm up, time; returns
    figures as a dict."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset, roi, batch = parse_config(args.child_config)
    if args.child == "paired":
        return paired_child(args, device, preset, roi, batch)
    model, step = make_step(args.child, preset, roi, device)
    data = [b.to(device) for b in batches(roi, batch, args.warmup + args.steps)]

    first = time.perf_counter()
    for i, x in enumerate(data[: args.warmup]):
        step(x)
        if i == 0:
            sync(device)
            first = time.perf_counter() - first  # includes the compilation for volmae-compile
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for x in data[args.warmup :]:
        sync(device)
        t = time.perf_counter()
        loss = step(x)
        sync(device)
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    out = {"times": times, "losses": losses, "first_step_s": first}
    if getattr(model, "compile_failed", None):
        raise RuntimeError(f"torch.compile failed: {model.compile_failed}")
    out["peak_bytes"] = peak_bytes(device)
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step(data[0])
        out["flops_per_step"] = counter.get_total_flops()
    return out


def paired_rows(config: str, variants: list[str], child_args: list[str], args) -> dict:
    """Run the interleaved one-process child, print its rows (median step, median of the per-round ratios MONAI /
    variant) and return its figures."""
    steps = ["--steps", str(args.paired_steps)]
    r = run_child(__file__, "paired", [*child_args, *steps, "--paired-variants", ",".join(variants)])
    times, out = r["paired_times"], {"variants": variants, "times": r["paired_times"], "losses": r["paired_losses"]}
    for v in variants:  # no loss column: the variants draw their masks one after another from one generator
        print(f"| {config} | {v}, interleaved in one process | {statistics.median(times[v]):.3f} | | | | |")
    for v in variants[1:]:
        ratio = median_ratio(times["monai"], times[v])
        out[f"speedup_monai_over_{v}"] = ratio
        label = f"ratio MONAI / {v}, median of {len(times[v])} interleaved rounds"
        print(f"| {config} | {label} | **{ratio:.2f}x** | | | | |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["vit-base:96:2", "vit-tiny:40x56x40:4"], help="preset:ROI:batch")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="leave out the volmae-compile variant")
    ap.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="add volmae-bf16: volmae under torch.autocast('cpu', bfloat16), to ask whether bf16 pays on this CPU "
        "(volmae trains in fp32 on the CPU: docs/performance.md)",
    )
    ap.add_argument(
        "--paired-steps", type=int, default=10, help="steps of the interleaved one-process comparison (0: none)"
    )
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    ap.add_argument("--paired-variants", help=argparse.SUPPRESS)
    add_common_args(ap, ("monai", "volmae", "volmae-mkl", "volmae-onednn", "volmae-compile", "volmae-bf16", "paired"))
    args = parse_or_serve(ap, child)
    if args is None:
        return 0
    results = []
    head = "| config | variant | step s (median) | volumes/s | peak memory GiB | mean loss | first step s |"
    print(head + "\n|---|---|---|---|---|---|---|")
    variants = ["monai", "volmae"] + (["volmae-mkl", "volmae-onednn"] if args.device == "cpu" else [])
    variants += [] if args.no_compile else ["volmae-compile"]
    if args.cpu_bf16:
        if args.device != "cpu":
            raise SystemExit("--cpu-bf16 is a CPU question; on CUDA volmae's own variant already runs bf16 autocast")
        variants.append("volmae-bf16")
    for config in args.config:
        preset, roi, batch = parse_config(config)
        child_args = ["--child-config", config, "--device", args.device, "--threads", str(args.threads)]
        child_args += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        runs = alternate_rounds(__file__, variants, child_args, args.rounds)
        row = {"config": config, "preset": preset, "roi": roi, "batch": batch}
        for variant, r in runs.items():
            med, peak = statistics.median(r["times"]), max(r["peak_bytes"])
            row[variant] = {
                "step_s_median": med,
                "step_s_all": r["times"],
                "volumes_per_s": batch / med,
                "peak_gib": peak / 2**30,
                "mean_loss": statistics.mean(r["losses"]),
                "first_step_s": r["first_step_s"],  # one per round (process): compilation for volmae-compile
            }
            if "flops_per_step" in r:
                row[variant]["tflops_per_s"] = r["flops_per_step"][0] / med / 1e12  # the same count every round
            print(
                f"| {config} | {variant} | {med:.3f} | {batch / med:.2f} | {peak / 2**30:.2f} | "
                f"{statistics.mean(r['losses']):.4f} | {max(r['first_step_s']):.1f} |"
            )
        ref = row["monai"]
        for variant in variants[1:]:
            speedup = ref["step_s_median"] / row[variant]["step_s_median"]
            loss_diff = abs(ref["mean_loss"] - row[variant]["mean_loss"]) / ref["mean_loss"]
            row[f"speedup_monai_over_{variant}"], row[f"loss_rel_diff_{variant}"] = speedup, loss_diff
            tail = f"| | | loss differs {100 * loss_diff:.1f} % | |"
            print(f"| {config} | ratio MONAI / {variant} | **{speedup:.2f}x** {tail}")
        if args.paired_steps:
            row["paired"] = paired_rows(config, variants, child_args, args)
        results.append(row)
    if args.out_json:
        meta = run_meta(args)
        Path(args.out_json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
