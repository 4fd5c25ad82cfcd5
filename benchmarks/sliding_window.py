"""Sliding-window inference of one CT-sized volume: volmae's ``Predictor`` vs MONAI's ``SlidingWindowInferer`` as the
model-zoo bundles call it, side by side in one run, with output agreement.

The volume is a preprocessed CT (1 x ``--shape``, default 512 x 512 x 200 voxels, i.e. already resampled to
1.5 x 1.5 x 2 mm and scaled to [0, 1]): a synthetic body ellipse with organ- and bone-like blobs and noise. The
network is UNETR-B (ViT-B/16, 96^3 window, 14 classes) with seeded random weights: MONAI's ``UNETR`` for the
reference, volmae's ``build_unetr("vit-base")`` carrying the very same weights for volmae (at patch 16 the two are
layer for layer the same network). Both: window 96^3, overlap 0.5, ``--mode`` blending (gaussian, volmae's
default; the zoo's BTCV bundle uses constant, ``--mode constant``), 4 windows per batch, stitching on the network's
device, argmax over classes; fp32 on the CPU, autocast (bf16) on a GPU for both.

volmae's path: ``Predictor.logits`` with ``compile=True`` (``volmae.inference.compiled``); ``--no-compile`` times
it eager. Each variant runs in its own child process (clean peak RSS / peak GPU memory) and writes its label map; the
parent reports wall times (volmae's split into the one-off compilation, measured on one batch of windows before the
volume, and the volume), peak memory, the share of voxels whose argmax agrees (target >= 99.9 %) and the ratio
MONAI / volmae on the total. ``--cpu-bf16`` adds a third child, ``volmae-bf16``: the same predictor under
``torch.autocast("cpu", torch.bfloat16)`` (volmae infers in fp32 on the CPU; this asks whether this CPU's bf16 units
would pay). Run by hand:

    python benchmarks/sliding_window.py [--shape 512 512 200] [--mode gaussian] [--device cpu] [--cpu-bf16]
                                        [--out-json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import add_common_args, parse_or_serve, peak_bytes, run_child, run_meta


def synthetic_volume(shape) -> torch.Tensor:
    """``1 1 D H W`` preprocessed CT-like volume in [0, 1]."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    vol[body] = 0.5
    vol[((x - 0.3) / 0.25) ** 2 + (y / 0.2) ** 2 + (z / 0.5) ** 2 < 1] = 0.6
    vol[(x / 0.08) ** 2 + ((y + 0.45) / 0.08) ** 2 < 1] = 1.0
    vol += np.random.default_rng(0).normal(0, 0.03, shape).astype(np.float32) * body
    return torch.from_numpy(np.clip(vol, 0, 1))[None, None]


def networks():
    """MONAI's UNETR-B and volmae's, with the same seeded weights (volmae's, written in MONAI's layout)."""
    from monai.networks.nets import UNETR

    from volmae.networks import build_unetr
    from volmae.networks.weights import volmae_unetr_to_monai

    torch.manual_seed(0)
    ours = build_unetr("vit-base", 1, 14, (96, 96, 96), skip_norm=False).model
    ref = UNETR(1, 14, (96, 96, 96), feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, qkv_bias=True)
    ref.load_state_dict(volmae_unetr_to_monai(ours.state_dict()))
    return ref.eval(), ours.eval()


def child(args) -> dict:
    from monai.inferers import SlidingWindowInferer

    from volmae.data.transforms import Preprocessing
    from volmae.inference.predictor import Predictor
    from volmae.utils.runtime import autocast

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ref, ours = networks()
    image = synthetic_volume(tuple(args.shape)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out: dict = {}
    with torch.no_grad():
        if args.child == "monai":
            net = ref.to(device)
            inferer = SlidingWindowInferer(roi_size=96, sw_batch_size=4, overlap=0.5, mode=args.mode)
            sync()
            t = time.perf_counter()
            with autocast(device, device.type == "cuda"):
                logits = inferer(image, net)
            labels = logits.argmax(1)
            sync()
            out["volume_s"] = time.perf_counter() - t
        else:
            prep = Preprocessing("ct", (96, 96, 96))
            pred = Predictor(ours.to(device), prep, device, 4, 0.5, args.mode, amp=True, compile=args.compile)
            # volmae-bf16: the same predictor under CPU bf16 autocast (the Predictor's own amp is CUDA-only)
            bf16 = args.child == "volmae-bf16"
            cpu_bf16 = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
            with cpu_bf16:
                sync()
                t = time.perf_counter()
                if args.compile:  # the one-off compilation, on one batch of windows
                    pred.network(torch.zeros(4, 1, 96, 96, 96, device=device))
                sync()
                out["compile_s"] = time.perf_counter() - t
                out["compile_failed"] = getattr(pred.network, "failed", None)
                t = time.perf_counter()
                labels = pred.logits(image).argmax(1)
                sync()
                out["volume_s"] = time.perf_counter() - t
    np.save(args.labels, labels.to(torch.uint8).cpu().numpy())
    out["peak_bytes"] = peak_bytes(device)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    ap.add_argument("--mode", choices=["gaussian", "constant"], default="gaussian")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="also run volmae's predictor under torch.autocast('cpu', bfloat16): does bf16 pay on this CPU?",
    )
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    add_common_args(ap, ("monai", "volmae", "volmae-bf16"))
    args = parse_or_serve(ap, child)
    if args is None:
        return 0
    if args.cpu_bf16 and args.device != "cpu":
        raise SystemExit("--cpu-bf16 is a CPU question; on CUDA both paths already run bf16 autocast")
    variants = ["monai", "volmae"] + (["volmae-bf16"] if args.cpu_bf16 else [])
    res, labels = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            path = Path(tmp) / f"{variant}.npy"
            extra = ["--labels", str(path), "--mode", args.mode, "--shape", *map(str, args.shape)]
            extra += ["--device", args.device, "--threads", str(args.threads)]
            res[variant] = run_child(__file__, variant, [*extra, "--compile" if args.compile else "--no-compile"])
            labels[variant] = np.load(path)
    ref_s = res["monai"]["volume_s"]
    print(f"volume 1 x {' x '.join(map(str, args.shape))}, UNETR-B 96^3, overlap 0.5, {args.mode}, {args.device}")
    print("| variant | one-off compile s | volume s | total s | peak memory GiB |\n|---|---|---|---|---|")
    print(f"| MONAI SlidingWindowInferer | - | {ref_s:.1f} | {ref_s:.1f} | {res['monai']['peak_bytes'] / 2**30:.2f} |")
    agree, ratio = {}, {}
    for variant in variants[1:]:
        r = res[variant]
        ours_s = r["volume_s"] + r["compile_s"]
        agree[variant] = float((labels["monai"] == labels[variant]).mean())
        ratio[variant] = ref_s / ours_s
        name = f"{variant} ({'compiled' if args.compile else 'eager'})"
        print(f"| {name} | {r['compile_s']:.1f} | {r['volume_s']:.1f} | {ours_s:.1f} | {r['peak_bytes'] / 2**30:.2f} |")
    for variant in variants[1:]:
        volume_ratio = ref_s / res[variant]["volume_s"]
        print(f"ratio MONAI / {variant} (total): {ratio[variant]:.2f}x; (volume only) {volume_ratio:.2f}x")
        print(f"argmax agreement MONAI vs {variant}: {100 * agree[variant]:.4f} % of voxels (target >= 99.9 %)")
        if res[variant].get("compile_failed"):
            print(f"compilation failed, {variant} ran eager: {res[variant]['compile_failed']}")
    if args.out_json:
        meta = run_meta(args)
        out = {"meta": meta, "shape": args.shape, "mode": args.mode, "results": res}
        out["argmax_agreement"], out["ratio_total"] = agree["volmae"], ratio["volmae"]
        if args.cpu_bf16:
            out["argmax_agreement_bf16"], out["ratio_total_bf16"] = agree["volmae-bf16"], ratio["volmae-bf16"]
        Path(args.out_json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
