"""The end-to-end demo: masked self-pretraining -> fine-tuning -> held-out Dice, on MSD Task04 hippocampus.

``run_demo(DemoConfig())`` finds the data (``--dataset_dir``, else ``$VOLMAE_DATA/msd_hippocampus`` or
``../shared/data/msd_hippocampus``, else MONAI's ``DecathlonDataset`` download of Task04_Hippocampus, md5-checked,
into ``cache_dir``), runs the three stages with one of the recipes below and writes a report folder:
``report.md``, ``summary.json`` / ``metrics.csv`` (held-out Dice and HD95), ``pictures/`` (masked reconstructions
and segmentation overlays) and ``demo_config.yaml`` (every setting used).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from volmae.data.paths import dataset_path
from volmae.engine.finetune import FinetuneConfig, finetune
from volmae.engine.pretrain import PretrainConfig, pretrain
from volmae.errors import ConfigError, DataError
from volmae.evaluation.evaluate import EvaluateConfig, evaluate
from volmae.utils.io import atomic_write_text, config_yaml
from volmae.utils.runtime import cpu_has_bf16_units, resolve_device

__all__ = ["DemoConfig", "RECIPES", "run_demo", "find_hippocampus"]

TASK = "Task04_Hippocampus"


@dataclass
class DemoConfig:
    dataset_dir: str | None = None
    out_dir: str = "reports/demo"
    recipe: str = "cnn"
    fold: int = 0
    device: str = "auto"
    seed: int = 0
    cpu_bf16: bool | None = None  # None: on where the CPU multiplies bf16 fast (runtime.cpu_has_bf16_units)
    cache_dir: str = str(Path.home() / ".cache" / "volmae")
    download: bool = True
    overwrite: bool = False
    quiet: bool = False


_ROI = (40, 56, 40)  # hippocampus crops are ~35 x 50 x 35 voxels

# Stage settings per recipe ("title" names it in the report); dataset_dir / out_dir / device / seed / fold / quiet /
# cpu_bf16 are filled in by run_demo.
RECIPES: dict[str, dict] = {
    # The default: S3D sparse-masked pretraining of the ResEnc U-Net, whole-network transfer, fine-tuning at the
    # scratch learning rate (the CNN recipe, networks.registry.RECIPES). About 20 minutes on 2 CPU cores with bf16
    # units (AMX, AMD Zen 4); about twice that in fp32.
    "cnn": {
        "title": "S3D pretraining -> ResEnc U-Net",
        "pretrain": dict(preset="resenc-tiny", roi_size=_ROI, epochs=10, batch_size=4, num_samples=1, lr=5e-4),
        "finetune": dict(
            preset="resenc-tiny", roi_size=_ROI, steps=800, batch_size=2, num_samples=2, lr=5e-4, warmup_epochs=0.5,
            val_every=0,
        ),
    },
    # MAE pretraining -> UNETR with a ViT-Ti encoder, 16 minutes on 2 CPU cores in fp32.
    "vit": {
        "title": "MAE pretraining -> UNETR",
        "pretrain": dict(preset="vit-tiny", roi_size=_ROI, epochs=10, batch_size=4, num_samples=2, lr=1.5e-3,
                         warmup_epochs=1),
        "finetune": dict(preset="vit-tiny", roi_size=_ROI, epochs=4, batch_size=2, num_samples=2, lr=5e-4,
                         warmup_epochs=0.5, val_every=0),
    },
    # A one-minute check that the whole pipeline runs (tiny ROI, one epoch each); numbers are meaningless.
    "smoke": {
        "title": "pipeline check (S3D -> ResEnc U-Net, tiny)",
        "pretrain": dict(preset="resenc-tiny", roi_size=(24, 32, 24), epochs=1, batch_size=4, num_samples=1),
        "finetune": dict(preset="resenc-tiny", roi_size=(24, 32, 24), epochs=1, batch_size=4, num_samples=1,
                         val_every=0),
    },
    # The SelfMedMAE-sized recipe for a GPU: ViT-B/16 needs 96^3 inputs, so hippocampus uses ViT-S-like depth at
    # patch 8 with longer schedules.
    "full": {
        "title": "MAE pretraining -> UNETR (ViT-S, GPU schedule)",
        "pretrain": dict(
            preset="vit-small",
            patch_size=8,
            roi_size=_ROI,
            epochs=400,
            batch_size=8,
            num_samples=2,
            lr=5e-4,
            warmup_epochs=20,
            num_workers=4,
        ),
        "finetune": dict(
            preset="vit-small",
            patch_size=8,
            roi_size=_ROI,
            epochs=300,
            batch_size=4,
            num_samples=2,
            lr=5e-4,
            warmup_epochs=10,
            val_every=10,
            select_best=True,  # on the validation cases drawn from the training cases
            num_workers=4,
        ),
    },
}  # fmt: skip


def find_hippocampus(dataset_dir: str | None, cache_dir: str, download: bool) -> Path:
    """The Task04 folder: given, shared, cached, or downloaded (md5-checked) with MONAI."""
    if dataset_dir:
        p = Path(dataset_dir).expanduser()
        if not (p / "dataset.json").is_file():
            raise DataError(f"--dataset_dir {p}: no dataset.json there (expected the MSD Task04_Hippocampus folder)")
        return p
    shared = dataset_path("msd_hippocampus")
    if shared is not None:
        return shared
    cached = Path(cache_dir).expanduser() / TASK
    if (cached / "dataset.json").is_file():
        return cached
    if not download:
        raise DataError(f"no hippocampus data found; pass --dataset_dir <{TASK} folder> (MSD layout)")
    from monai.apps import DecathlonDataset, download_and_extract

    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_and_extract(
            DecathlonDataset.resource[TASK],
            str(cached.parent / f"{TASK}.tar"),
            str(cached.parent),
            hash_val=DecathlonDataset.md5[TASK],
            hash_type="md5",
        )
    except Exception as e:  # noqa: BLE001 - no network, checksum mismatch, disk full ...
        raise DataError(
            f"no hippocampus data found and the download of {TASK} failed ({type(e).__name__}: {e}); "
            f"pass --dataset_dir <{TASK} folder> (MSD layout) or set VOLMAE_DATA"
        ) from None
    return cached


def run_demo(cfg: DemoConfig) -> dict:
    """Pretrain, fine-tune, evaluate; returns the summary dict also written to ``report.md``."""
    if cfg.recipe not in RECIPES:
        raise ConfigError(f"recipe={cfg.recipe!r}: choose one of {', '.join(RECIPES)}")
    data = str(find_hippocampus(cfg.dataset_dir, cfg.cache_dir, cfg.download))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(
        dataset_dir=data,
        device=cfg.device,
        seed=cfg.seed,
        fold=cfg.fold,
        quiet=cfg.quiet,
        overwrite=cfg.overwrite,
        cpu_bf16=_cpu_bf16(cfg),
    )
    recipe = RECIPES[cfg.recipe]
    pre_cfg = PretrainConfig(out_dir=str(out / "pretrain"), **common, **recipe["pretrain"])
    ft_cfg = FinetuneConfig(out_dir=str(out / "finetune"), **common, **recipe["finetune"])
    atomic_write_text(out / "demo_config.yaml", config_yaml({"demo": cfg, "pretrain": pre_cfg, "finetune": ft_cfg}))
    times = {}
    t0 = time.time()
    pre = pretrain(pre_cfg)
    times["pretrain_s"] = time.time() - t0
    t1 = time.time()
    ft = finetune(replace(ft_cfg, pretrained=str(pre.model_path)))
    times["finetune_s"] = time.time() - t1
    t2 = time.time()
    report = evaluate(
        EvaluateConfig(str(ft.model_path), data, str(out), fold=cfg.fold, device=cfg.device, quiet=cfg.quiet)
    )
    times["evaluate_s"] = time.time() - t2
    times["total_s"] = time.time() - t0
    pictures = out / "pictures"
    for p in pre.pictures:
        shutil.copyfile(p, pictures / p.name)
    summary = {
        "dataset": data,
        "recipe": cfg.recipe,
        "title": recipe["title"],
        "cpu_bf16": common["cpu_bf16"],
        "fold": cfg.fold,
        "train_cases": ft.num_train_cases,
        "held_out_cases": len(report.cases),
        "mean_dice": report.summary["mean"]["dice_mean"],
        "dice": {n: report.summary[n]["dice_mean"] for n in report.names},
        "hd95": {n: report.summary[n]["hd95_mean"] for n in report.names},
        **{k: round(v, 1) for k, v in times.items()},
        "cpu_count": os.cpu_count(),
        "model": str(ft.model_path),
    }
    atomic_write_text(out / "report.md", _markdown(summary, report.table()))
    return summary


def _cpu_bf16(cfg: DemoConfig) -> bool:
    """The demo's bf16 choice: as asked, else on for a CPU run on a CPU with bf16 units (about 2x faster there)."""
    if cfg.cpu_bf16 is not None:
        return cfg.cpu_bf16
    return resolve_device(cfg.device).type == "cpu" and cpu_has_bf16_units()


def _markdown(s: dict, table: str) -> str:
    return (
        f"# volmae demo: {s['title']} on hippocampus (recipe `{s['recipe']}`)\n\n"
        f"- data: `{s['dataset']}`, fold {s['fold']} held out ({s['held_out_cases']} cases), "
        f"{s['train_cases']} training cases\n"
        f"- wall time: pretrain {s['pretrain_s']:.0f} s, fine-tune {s['finetune_s']:.0f} s, evaluate "
        f"{s['evaluate_s']:.0f} s, total {s['total_s']:.0f} s on {s['cpu_count']} CPU cores"
        f"{' (bf16 autocast)' if s['cpu_bf16'] else ''}\n"
        f"- **mean foreground Dice {s['mean_dice']:.4f}**\n\n```\n{table}\n```\n\n"
        "Files: `metrics.csv` (per case and class), `summary.json`, `pictures/` (masked reconstructions, overlays), "
        "`demo_config.yaml` (all settings), `pretrain/` and `finetune/` (checkpoints, logs).\n"
    )
