"""Cost of each network family at its ROI, measured side by side in one run: parameters, FLOPs per forward, training
step time, peak memory of training, and sliding-window inference time per real volume, each with its ratio to the
first network (the reference; by default UNETR-Ti).

Defaults: the hippocampus networks (``vit-tiny`` UNETR, ``nnformer-tiny`` at 48 x 64 x 48, the nearest ROI its
windows fit, ``resenc-tiny``, ``primus-tiny``, the ``dynunet`` peer; the others at 40 x 56 x 40; 3 classes). A
training step = forward + backward + AdamW on ``--batch`` crops (``--cpu-bf16``: under CPU bf16 autocast, as the study
trains on CPUs with bf16 units); inference = ``Predictor.segment`` with 50 % overlap on the first ``--cases`` real
hippocampus volumes, preprocessed beforehand. Times are medians over ``--repeats`` after ``--warmup`` untimed runs,
the networks interleaved so that machine load hits all alike. Peak memory: each network trains ``--warmup`` steps in a
child process of its own (peak resident memory, :func:`common.peak_bytes`; on a GPU, peak allocated GPU memory).
``--device cuda``: the same on a GPU, training under bf16 autocast, each step synchronised before its time is read
(``benchmarks/gpu_checks.sh`` runs it; inference is timed only where the hippocampus data is present). Run by hand:

    python benchmarks/family_cost.py [--networks vit-tiny nnformer-tiny@48x64x48 ...] [--threads 2] [--cpu-bf16]
        [--device cuda] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys

import torch
from common import cpu_features, cpu_model, peak_bytes, run_child, timed
from torch.utils.flop_counter import FlopCounterMode

from volmae.data import dataset_path, get_preprocessing, load_msd_datalist
from volmae.data.transforms import infer_transforms
from volmae.inference.predictor import Predictor
from volmae.networks import build_segmenter
from volmae.utils.optim import param_groups

DEFAULT = ["vit-tiny", "nnformer-tiny@48x64x48", "resenc-tiny", "primus-tiny", "dynunet"]


def parse_network(spec: str, roi: list[int]) -> tuple[str, tuple[int, int, int]]:
    """``preset`` or ``preset@DxHxW`` -> (preset, ROI)."""
    preset, _, size = spec.partition("@")
    if not size:
        return preset, tuple(roi)
    dims = tuple(int(s) for s in size.split("x"))
    if len(dims) != 3:
        raise SystemExit(f"{spec}: expected preset@DxHxW, e.g. nnformer-tiny@48x64x48")
    return preset, dims


def build(preset: str, roi: tuple[int, int, int], classes: int, device: torch.device) -> torch.nn.Module:
    kw = {"deep_supervision": False} if preset.startswith("nnformer") else {}
    return build_segmenter(preset, 1, classes, roi, **kw).model.to(device)


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def trainer(model: torch.nn.Module, roi, args):
    """A closure running one training step of ``model`` on a fixed random batch (on a GPU: under bf16 autocast, and
    synchronised, so that a timer around it measures the step, not its launch)."""
    dev = torch.device(args.device)
    xb = torch.randn(args.batch, 1, *roi, device=dev)
    yb = torch.randint(0, args.classes, (args.batch, *roi), device=dev)
    opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=1e-4)
    bf16 = args.cpu_bf16 or dev.type == "cuda"
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(xb)
        torch.nn.functional.cross_entropy(out.float(), yb).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return step


def child_memory(args) -> dict:
    """In a child process: train one network ``--warmup`` steps, report its peak resident memory."""
    torch.set_num_threads(args.threads)
    preset, roi = parse_network(args.child, args.roi)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    step = trainer(build(preset, roi, args.classes, dev), roi, args)
    for _ in range(max(1, args.warmup)):
        step()
    return {"peak_mb": peak_bytes(dev) / 2**20}


def _machine(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", default=DEFAULT, help="preset or preset@DxHxW; the first is the reference")
    ap.add_argument("--roi", type=int, nargs=3, default=[40, 56, 40], help="the ROI of networks given without one")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cases", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cpu-bf16", action="store_true", help="train under CPU bf16 autocast")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (trains under bf16 autocast there)")
    ap.add_argument("--no-memory", action="store_true", help="skip the child processes that measure peak memory")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # preset@DxHxW: measure its memory (run_child)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_memory(args)))
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    specs = [parse_network(s, args.roi) for s in args.networks]
    nets = {p: build(p, roi, args.classes, dev) for p, roi in specs}
    rois = dict(specs)
    steps = {p: trainer(nets[p], rois[p], args) for p in nets}

    hippo = dataset_path("msd_hippocampus")
    volumes: dict[str, list] = {p: [] for p in nets}
    predictors = {}
    for name, model in nets.items():
        prep = get_preprocessing("hippocampus", roi_size=rois[name])
        predictors[name] = Predictor(model, prep, dev, amp=dev.type == "cuda", cpu_bf16=args.cpu_bf16)
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
        timed(steps[name], 0, args.warmup)
    for _ in range(args.repeats):  # interleaved
        for name in nets:
            step_times[name] += timed(steps[name], 1, 0)
            if volumes[name]:
                infer_times[name] += [t / len(volumes[name]) for t in timed(lambda n=name: infer_all(n), 1, 0)]

    rows = {}
    for name, model in nets.items():
        memory = None
        if not args.no_memory:
            spec = f"{name}@{'x'.join(map(str, rois[name]))}"
            memory = run_child(__file__, spec, sys.argv[1:])["peak_mb"]  # in a process of its own
        rows[name] = {
            "roi": list(rois[name]),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops_forward": flops(model, torch.randn(1, 1, *rois[name], device=dev)) / 1e9,
            "train_step_s": statistics.median(step_times[name]),
            "train_peak_mb": memory,
            "infer_s_per_volume": statistics.median(infer_times[name]) if infer_times[name] else None,
        }
    ref = next(iter(rows))
    numeric = ("params_M", "gflops_forward", "train_step_s", "train_peak_mb", "infer_s_per_volume")
    ratios = {
        name: {k: r[k] / rows[ref][k] for k in numeric if r[k] is not None and rows[ref][k]} for name, r in rows.items()
    }
    result = {
        "batch": args.batch,
        "threads": args.threads,
        "cpu_bf16": args.cpu_bf16,
        "device": args.device,
        "inference_volumes": len(volumes[ref]),
        "machine": f"{_machine(dev)}, torch {torch.__version__}",
        "cpu_features": cpu_features(),
        "networks": rows,
        f"ratio_over_{ref}": ratios,
    }
    n, w = len(volumes[ref]), max(14, *map(len, rows))
    print(
        f"{_machine(dev)}, batch {args.batch}, {args.threads} thread(s), bf16 {args.cpu_bf16 or dev.type == 'cuda'}, "
        f"{n} real volumes for inference"
    )
    print(
        f"{'':{w}s} {'ROI':>10s} {'params M':>9s} {'GFLOPs/fwd':>10s} {'step s':>7s} {'x ref':>6s} {'peak MB':>8s} "
        f"{'infer s/vol':>11s}"
    )
    for name, r in rows.items():
        inf = f"{r['infer_s_per_volume']:.3f}" if r["infer_s_per_volume"] is not None else "n/a"
        mem = f"{r['train_peak_mb']:.0f}" if r["train_peak_mb"] is not None else "n/a"
        roi = "x".join(map(str, r["roi"]))
        print(
            f"{name:{w}s} {roi:>10s} {r['params_M']:9.2f} {r['gflops_forward']:10.2f} {r['train_step_s']:7.3f} "
            f"{ratios[name]['train_step_s']:6.2f} {mem:>8s} {inf:>11s}"
        )
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
