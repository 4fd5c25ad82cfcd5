"""Tune fine-tuning settings by cross-validation on the *training* side of a fold, never on its held-out cases.

Every combination of the ``--grid`` values (any :class:`FinetuneConfig` field: ``lr``, ``beta2``, ``weight_decay``,
``steps``, ``tokenizer``, ``patch_size``, ``pretrained`` (``none`` = from scratch), ``pretrained_lr_scale``, ...) is
trained for each seed and each validation fold: the label fraction is drawn from the training folds other than the
validation fold, and the run is scored on (the first ``--val-cases`` of) that validation fold. Without
``--val-folds`` it is one split of the training side (the label fraction, and the next ``--val-cases`` training cases
as validation): the split the S3D learning-rate tuning used (docs/results.md). One JSON line per run goes to stdout
and ``OUT/runs.jsonl``; at the end, each combination's mean validation Dice over its runs, best first.

Usage (the S3D learning-rate tuning, then a Primus recipe search over two validation folds):
  python tools/experiments/recipe_tuning.py DATASET OUT --preset resenc-tiny --cpu-bf16 \\
      --grid pretrained=none,runs/s3d/model.pt pretrained_lr_scale=1.0,0.3
  python tools/experiments/recipe_tuning.py DATASET OUT --preset primus-tiny --cpu-bf16 --val-folds 1 2 \\
      --grid lr=5e-4,3e-4 beta2=0.999,0.98 tokenizer=patch,conv
"""

import argparse
import itertools
import json
import statistics
import time
import typing
from pathlib import Path

from volmae.data.datalist import inner_fold, label_fraction, load_datalist, split_fold
from volmae.data.loading import steps_per_epoch
from volmae.engine.finetune import Cases, FinetuneConfig, finetune
from volmae.utils.flags import parse_flag

HINTS = typing.get_type_hints(FinetuneConfig)  # every field's type


def parse_value(name: str, text: str):
    """``text`` as the type of FinetuneConfig field ``name`` (``none`` for None)."""
    if text.lower() == "none":
        return None
    tp = HINTS[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if bool in args:
        return parse_flag(name, text)  # true / false, as the configs read yes/no settings
    for kind in (int, float, str):
        if kind in args:
            return kind(text)
    raise SystemExit(f"--grid {name}: a {tp} field cannot be given on the command line")


def parse_grid(entries: list[str]) -> dict[str, list]:
    grid = {}
    for entry in entries:
        name, _, values = entry.partition("=")
        if name not in HINTS or not values:
            near = [f for f in HINTS if name and (name in f or f in name)]
            raise SystemExit(f"--grid {entry!r}: expected FIELD=V1,V2 with a FinetuneConfig field (nearest: {near})")
        grid[name] = [parse_value(name, v) for v in values.split(",")]
    return grid


def combinations(grid: dict[str, list]) -> list[dict]:
    """Every combination once; a scratch run (pretrained None) drops ``pretrained_lr_scale``, which it ignores."""
    out: list[dict] = []
    for values in itertools.product(*grid.values()):
        combo = dict(zip(grid, values))
        if combo.get("pretrained", "") is None:
            combo.pop("pretrained_lr_scale", None)
        if combo not in out:
            out.append(combo)
    return out


def short(name: str, value) -> str:
    """A run-folder word for a grid value (a pretrained file by its folder's name, scratch for none)."""
    if name == "pretrained":
        return "scratch" if value is None else Path(value).parent.name or Path(value).stem
    return str(value)


def splits(datalist, fold: int, val_folds: list[int] | None, fraction: float, seed: int, val_cases: int):
    """``[(name, train, val)]``: the runs' case lists, all inside fold ``fold``'s training side."""
    train_side, _ = split_fold(datalist, fold)
    if not val_folds:
        train = label_fraction(train_side, fraction, seed)
        chosen = {it["case"] for it in train}
        return [("train-side", train, [it for it in train_side if it["case"] not in chosen][:val_cases])]
    out = []
    for k in val_folds:  # the held-out fold is refused by inner_fold
        rest, val = inner_fold(datalist, fold, k)
        out.append((f"val-fold-{k}", label_fraction(rest, fraction, seed), val[:val_cases]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("out")
    ap.add_argument("--preset", default="resenc-tiny")
    ap.add_argument("--grid", nargs="*", default=[], metavar="FIELD=V1,V2")
    ap.add_argument("--fold", type=int, default=0, help="the held-out fold, never used")
    ap.add_argument("--val-folds", type=int, nargs="*", default=None)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--val-cases", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--cpu-bf16", action="store_true")
    a = ap.parse_args()
    datalist = load_datalist(a.dataset)
    combos = combinations(parse_grid(a.grid))
    results: dict[str, list[float]] = {}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for combo in combos:
        name = "_".join(f"{k}-{short(k, v)}" for k, v in combo.items()) or "default"
        for seed in a.seeds:
            for split, train, val in splits(datalist, a.fold, a.val_folds, a.fraction, seed, a.val_cases):
                settings = {"steps": a.steps, "lr": a.lr, "layer_decay": 1.0, "batch_size": 2, "num_samples": 2,
                            "seed": seed, "cpu_bf16": a.cpu_bf16, **combo}  # fmt: skip
                per_epoch = steps_per_epoch(len(train), settings["batch_size"])
                t0 = time.time()
                res = finetune(
                    FinetuneConfig(
                        a.dataset, str(out / name / f"s{seed}_{split}"), preset=a.preset,
                        epochs=-(-settings["steps"] // per_epoch), warmup_epochs=0.05 * settings["steps"] / per_epoch,
                        val_every=10**6, device="cpu", quiet=True, overwrite=True, **settings,
                    ),
                    Cases(datalist, train, val),
                )  # fmt: skip
                dice = res.history[-1]["val_dice"]
                results.setdefault(name, []).append(dice)
                line = {"run": name, "seed": seed, "split": split, "val_dice": round(dice, 4),
                        "train_cases": len(train), "val_cases": len(val), "minutes": round((time.time() - t0) / 60, 1),
                        **combo}  # fmt: skip
                print(json.dumps(line), flush=True)
                with open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(line) + "\n")
    for name, dices in sorted(results.items(), key=lambda kv: -statistics.fmean(kv[1])):
        print(f"{statistics.fmean(dices):.4f}  ({len(dices)} runs)  {name}")


if __name__ == "__main__":
    main()
