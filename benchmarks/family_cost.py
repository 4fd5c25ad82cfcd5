"""Cost of nnFormer vs UNETR at one ROI, measured side by side in one run: parameters, FLOPs per forward, training
step time and sliding-window inference time per real volume, with the ratio nnFormer / UNETR.

Defaults: the hippocampus head-to-head (``vit-tiny`` UNETR at ROI 40 x 56 x 40 vs ``nnformer-tiny`` at 48 x 64 x 48,
the nearest ROI its windows fit; 3 classes; a training step = forward + backward + AdamW on ``--batch`` crops;
inference = ``Predictor.segment`` with 50 % overlap on the first ``--cases`` real hippocampus volumes, each network
with its own ROI, preprocessed beforehand). Times are medians over ``--repeats``
after ``--warmup`` untimed runs, the two networks interleaved so that machine load hits both alike. Run by hand:

    python benchmarks/nnformer_vs_unetr.py [--unetr vit-tiny] [--nnformer nnformer-tiny] [--roi 40 56 40]
        [--nnformer-roi 48 64 48] [--threads 1] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import cpu_features, cpu_model
from torch.utils.flop_counter import FlopCounterMode

from volmae.data import dataset_path, get_preprocessing, load_msd_datalist
from volmae.data.transforms import infer_transforms
from volmae.inference.predictor import Predictor
from volmae.networks import build_segmenter
from volmae.utils.optim import param_groups


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def timed(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unetr", default="vit-tiny")
    ap.add_argument("--nnformer", default="nnformer-tiny")
    ap.add_argument("--roi", type=int, nargs=3, default=[40, 56, 40], help="UNETR's ROI")
    ap.add_argument("--nnformer-roi", type=int, nargs=3, default=[48, 64, 48])
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cases", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rois = {"UNETR": tuple(args.roi), "nnFormer": tuple(args.nnformer_roi)}
    nets = {
        "UNETR": build_segmenter(args.unetr, 1, args.classes, rois["UNETR"]).model,
        "nnFormer": build_segmenter(args.nnformer, 1, args.classes, rois["nnFormer"], deep_supervision=False).model,
    }
    batches = {
        k: (torch.randn(args.batch, 1, *r), torch.randint(0, args.classes, (args.batch, *r))) for k, r in rois.items()
    }
    opts = {k: torch.optim.AdamW(param_groups(m, 1e-4), lr=1e-4) for k, m in nets.items()}

    def train_step(name):
        model, opt = nets[name], opts[name]
        model.train()
        opt.zero_grad(set_to_none=True)
        xb, yb = batches[name]
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

    hippo = dataset_path("msd_hippocampus")
    volumes: dict[str, list] = {k: [] for k in nets}
    predictors = {}
    for name, model in nets.items():
        prep = get_preprocessing("hippocampus", roi_size=rois[name])
        predictors[name] = Predictor(model, prep, torch.device("cpu"), amp=False)
        if hippo is not None:
            tf = infer_transforms(prep)
            items = load_msd_datalist(hippo).items[: args.cases]
            volumes[name] = [tf({"image": it["image"]})["image"][None] for it in items]

    def infer_all(name):
        for v in volumes[name]:
            predictors[name].segment(v)

    step_times: dict[str, list[float]] = {k: [] for k in nets}
    infer_times: dict[str, list[float]] = {k: [] for k in nets}
    for name in nets:  # warm-up
        timed(lambda n=name: train_step(n), 0, args.warmup)
    for _ in range(args.repeats):  # interleaved
        for name in nets:
            step_times[name] += timed(lambda n=name: train_step(n), 1, 0)
            if volumes[name]:
                infer_times[name] += [t / len(volumes[name]) for t in timed(lambda n=name: infer_all(n), 1, 0)]

    rows = {}
    for name, model in nets.items():
        rows[name] = {
            "preset": args.unetr if name == "UNETR" else args.nnformer,
            "roi": list(rois[name]),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops_forward": flops(model, torch.randn(1, 1, *rois[name])) / 1e9,
            "train_step_s": statistics.median(step_times[name]),
            "infer_s_per_volume": statistics.median(infer_times[name]) if infer_times[name] else None,
        }
    numeric = ("params_M", "gflops_forward", "train_step_s", "infer_s_per_volume")
    ratio = {k: rows["nnFormer"][k] / rows["UNETR"][k] for k in numeric if rows["UNETR"][k]}
    result = {
        "batch": args.batch,
        "threads": args.threads,
        "inference_volumes": len(volumes["UNETR"]),
        "machine": f"{cpu_model()}, torch {torch.__version__}",
        "cpu_features": cpu_features(),
        "networks": rows,
        "ratio_nnformer_over_unetr": ratio,
    }
    n = len(volumes["UNETR"])
    print(f"batch {args.batch}, {args.threads} thread(s), {n} real volumes for inference")
    print(f"{'':10s} {'ROI':>12s} {'params (M)':>11s} {'GFLOPs/fwd':>11s} {'train step (s)':>15s} {'infer s/vol':>12s}")
    for name, r in rows.items():
        inf = f"{r['infer_s_per_volume']:.3f}" if r["infer_s_per_volume"] is not None else "n/a"
        roi = "x".join(map(str, r["roi"]))
        print(
            f"{name:10s} {roi:>12s} {r['params_M']:11.2f} {r['gflops_forward']:11.2f} {r['train_step_s']:15.3f} "
            f"{inf:>12s}"
        )
    print("nnFormer / UNETR: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
