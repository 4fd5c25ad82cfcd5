"""Tune the fine-tuning learning rate of an S3D-pretrained ResEnc U-Net on the *training* side of a fold: train on a
label fraction of the training cases, validate on other training cases (never the held-out fold), for a few
``pretrained_lr_scale`` values and the scratch twin. Prints one line per run: validation Dice and training minutes.

Usage: python tools/experiments/s3d_recipe_tuning.py DATASET PRETRAINED_MODEL OUT [--fraction 0.05] [--seed 0]
       [--scales 1.0 0.3] [--val-cases 20] [--steps 400] [--lr 5e-4] [--cpu-bf16]
"""

import argparse
import json
import time
from pathlib import Path

from volmae.data.datalist import label_fraction, load_datalist, split_fold
from volmae.data.loading import steps_per_epoch
from volmae.engine.finetune import Cases, FinetuneConfig, finetune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("pretrained")
    ap.add_argument("out")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.3])
    ap.add_argument("--val-cases", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--preset", default="resenc-tiny")
    ap.add_argument("--cpu-bf16", action="store_true")
    ap.add_argument("--scratch", action=argparse.BooleanOptionalAction, default=True)
    a = ap.parse_args()
    datalist = load_datalist(a.dataset)
    train_side, _ = split_fold(datalist, 0)  # the held-out fold 0 is never touched
    train = label_fraction(train_side, a.fraction, a.seed)
    chosen = {it["case"] for it in train}
    val = [it for it in train_side if it["case"] not in chosen][: a.val_cases]
    per_epoch = steps_per_epoch(len(train), 2)
    runs = ([("scratch", None)] if a.scratch else []) + [(f"pretrained_x{s:g}", s) for s in a.scales]
    for name, scale in runs:
        t0 = time.time()
        res = finetune(
            FinetuneConfig(
                a.dataset, str(Path(a.out) / name), preset=a.preset, steps=a.steps, epochs=-(-a.steps // per_epoch),
                batch_size=2, num_samples=2, lr=a.lr, warmup_epochs=0.05 * a.steps / per_epoch, seed=a.seed,
                pretrained=a.pretrained if scale is not None else None, pretrained_lr_scale=scale,
                val_every=10**6, cpu_bf16=a.cpu_bf16, device="cpu", quiet=True, overwrite=True, layer_decay=1.0,
            ),
            Cases(datalist, train, val),
        )  # fmt: skip
        line = {"run": name, "val_dice": round(res.history[-1]["val_dice"], 4), "train_cases": len(train),
                "val_cases": len(val), "minutes": round((time.time() - t0) / 60, 1)}  # fmt: skip
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
