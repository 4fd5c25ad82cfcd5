"""Make a released model: train a bundle's network with the recipe volmae measured best, score it, pack it.

``release(ReleaseConfig(bundle="hippocampus"))`` runs on the bundle's MSD-layout task, fold ``fold`` held out:

1. masked pretraining of the bundle's network on the training side's images (labels unused), or ``pretrained``;
2. fine-tuning from it on every training case of the fold;
3. with ``cv_folds`` > 0, cross-validation on the training side only: the same recipe (pretraining reused; its
   labels were never read) trained without one training fold and scored on that fold, for ``cv_folds`` of the
   dataset's folds other than ``fold``; the held-out fold takes no part in it;
4. the released model's Dice and HD95 per class on the held-out fold;
5. packing: the weights cast to ``dtype`` (bf16 by default: half the file) and scored again on the held-out fold;
   kept when the mean Dice moves by at most ``dice_tolerance``, else fp32 is packed. The file must fit ``max_mb``.

A release takes hours on a CPU: ``resume`` continues a stopped one in the same ``out_dir`` (finished runs are reused,
a stopped run continues from its checkpoint). Its training times come from the runs' own records, so a resumed
release reports the time its runs took.

It writes ``<out_dir>/model.pt`` (the released model as a volmae model file: network, task, weights, provenance),
``<out_dir>/release.json`` (every figure and setting), ``<out_dir>/model_card.md`` and, with ``into`` (a bundle
folder), that bundle's ``models/model.pt`` (the plain state dict of its ``network_def``, as MONAI's tools load it),
``models/release.json`` and ``models/model_card.md``. The release is a thin layer over :func:`volmae.engine.pretrain`,
:func:`volmae.engine.finetune` and :func:`volmae.evaluation.evaluate`, as the demo is.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, fields, replace
from datetime import date
from pathlib import Path

import torch

from volmae import __version__
from volmae.artifact.bundles import check_fits_bundle, find_bundle, write_bundle_weights
from volmae.artifact.model import ModelArtifact
from volmae.bundle.specs import BundleSpec, get_bundle_spec
from volmae.data.datalist import dataset_folds, inner_fold, load_msd_datalist
from volmae.data.paths import dataset_path
from volmae.demo import RECIPES
from volmae.engine.finetune import Cases, FinetuneConfig, finetune
from volmae.engine.loop import CHECKPOINT
from volmae.engine.pretrain import PretrainConfig, pretrain
from volmae.errors import ConfigError, DataError
from volmae.evaluation.evaluate import EvaluateConfig, evaluate
from volmae.networks.registry import citations
from volmae.utils.io import atomic_write_json, atomic_write_text, sha256_file
from volmae.utils.runtime import cpu_has_bf16_units, cpu_info

__all__ = ["ReleaseConfig", "release", "DTYPES", "model_card"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ReleaseConfig:
    """Settings of ``volmae-release`` (the flags map onto these names)."""

    bundle: str = "hippocampus"
    dataset_dir: str | None = None  # None: the bundle's dataset under $VOLMAE_DATA / ../shared/data
    out_dir: str = "runs/release"
    into: str | None = None  # a bundle folder whose models/ receives the release
    install_from: str | None = None  # a finished release's out_dir: install it into ``into`` without training
    recipe: str = "cnn"  # a volmae-demo recipe: its pretraining and fine-tuning settings
    steps: int | None = None  # fine-tuning steps (None: the recipe's)
    pretrain_epochs: int | None = None  # pretraining epochs (None: the recipe's)
    pretrained: str | None = None  # a finished pretraining's model.pt to start from instead of pretraining
    fold: int = 0
    cv_folds: int = 0
    dtype: str = "bf16"
    dice_tolerance: float = 0.001
    max_mb: float = 16.0
    seed: int = 0
    device: str = "auto"
    cpu_bf16: bool = False
    resume: bool = False  # continue a stopped release in out_dir: finished stages are reused, a stopped one continues
    overwrite: bool = False
    quiet: bool = False


def _check(cfg: ReleaseConfig, spec: BundleSpec) -> dict:
    if cfg.recipe not in RECIPES or (cfg.recipe == "smoke" and cfg.into):
        valid = [r for r in RECIPES if r != "smoke"] if cfg.into else list(RECIPES)
        raise ConfigError(f"recipe={cfg.recipe!r}: choose one of {', '.join(valid)}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
    if cfg.cv_folds < 0:
        raise ConfigError(f"cv_folds={cfg.cv_folds}: must be >= 0 (0: no cross-validation)")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume and overwrite: choose one (resume continues the runs in out_dir, overwrite redoes)")
    for name in ("steps", "pretrain_epochs"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: must be >= 1 (or None for the recipe's)")
    recipe = RECIPES[cfg.recipe]
    preset = recipe["finetune"]["preset"]
    if cfg.into and preset != spec.preset:
        raise ConfigError(
            f"recipe {cfg.recipe!r} trains {preset}, but bundle {spec.name}'s network_def is {spec.preset}; "
            f"release into it a recipe of its preset"
        )
    return recipe


def _dataset(cfg: ReleaseConfig, spec: BundleSpec) -> str:
    if cfg.dataset_dir:
        return cfg.dataset_dir
    found = dataset_path(spec.dataset)
    if found is None:
        raise DataError(f"no {spec.dataset} data found: pass --dataset-dir (the MSD-layout task folder)")
    return str(found)


def _run_dir(cfg: ReleaseConfig, folder: Path) -> dict:
    """A stage's ``out_dir``, and ``resume`` when the release resumes and that stage has a checkpoint there (a stage
    that never started starts; a finished one returns at once; a stopped one continues)."""
    return {"out_dir": str(folder), "resume": cfg.resume and (folder / CHECKPOINT).is_file()}


def _trained_seconds(history: list[dict]) -> float:
    """A run's training seconds from its per-epoch record (a resumed release counts the time its runs took, not
    this process's)."""
    return sum(float(e.get("seconds", 0.0)) for e in history)


def _scores(report) -> dict:
    names = list(report.names)
    return {
        "cases": len(report.cases),
        "mean_dice": report.summary["mean"]["dice_mean"],
        "dice": {n: report.summary[n]["dice_mean"] for n in names},
        "hd95": {n: report.summary[n]["hd95_mean"] for n in names},
    }


def _cast(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}


def _file_facts(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def release(cfg: ReleaseConfig) -> dict:
    """Train, cross-validate (optionally), score and pack a bundle's model; returns what ``release.json`` holds.
    With ``install_from``, install that finished release into ``into`` instead (nothing is trained)."""
    if cfg.install_from:
        return install_release(cfg.install_from, cfg.into)
    spec = get_bundle_spec(cfg.bundle)
    recipe = _check(cfg, spec)
    data = _dataset(cfg, spec)
    _inner_folds(cfg, data)  # an impossible cross-validation fails before any training
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(dataset_dir=data, device=cfg.device, seed=cfg.seed, fold=cfg.fold, quiet=cfg.quiet,
                  cpu_bf16=cfg.cpu_bf16, overwrite=cfg.overwrite)  # fmt: skip
    ft_settings = dict(recipe["finetune"], **({"steps": cfg.steps} if cfg.steps else {}))
    seconds: dict[str, float] = {}  # training time of each stage, from its runs' own records
    if cfg.pretrained:
        pretrained = Path(cfg.pretrained)
        if not pretrained.is_file():
            raise ConfigError(f"pretrained={cfg.pretrained}: file not found")
        pre_settings = {"reused": pretrained.name}
    else:
        pre_settings = dict(recipe["pretrain"], **({"epochs": cfg.pretrain_epochs} if cfg.pretrain_epochs else {}))
        pre_cfg = PretrainConfig(**_run_dir(cfg, out / "pretrain"), **common, **pre_settings)
        pre = pretrain(pre_cfg)
        pretrained, pre_settings = pre.model_path, asdict(pre_cfg)
        seconds["pretrain"] = _trained_seconds(pre.history)
    ft_cfg = FinetuneConfig(**_run_dir(cfg, out / "finetune"), **common, **ft_settings, pretrained=str(pretrained))
    ft = finetune(ft_cfg)
    seconds["finetune"] = _trained_seconds(ft.history)
    cv = _cross_validate(cfg, ft_cfg, data, out / "cv") if cfg.cv_folds else None
    if cv:
        seconds["cross_validation"] = cv.pop("seconds")
    model = ModelArtifact.load(ft.model_path, role="segmentation")
    held_out = _scores(_evaluate(cfg, model, data, out / "held_out"))
    packed, dtype, packed_scores = _pack(cfg, model, data, out, held_out)
    seconds["total"] = sum(seconds.values())
    summary = {
        "bundle": spec.name,
        "volmae_version": __version__,
        "command": release_command(cfg),
        "date": date.today().isoformat(),
        "task": spec.task,
        "classes": {str(k): v for k, v in spec.labels.items()},
        "data": {
            "dataset": Path(data).name,
            "source": spec.data_source,
            "fold_held_out": cfg.fold,
            "train_cases": ft.num_train_cases,
            "held_out_cases": held_out["cases"],
        },  # fmt: skip
        "licence": {"data": spec.data_source, "weights": spec.weights_license},
        "recipe": {
            "name": cfg.recipe,
            "title": recipe["title"],
            "pretrain": _portable(pre_settings),
            "finetune": _portable(asdict(ft_cfg)),
        },  # fmt: skip
        "held_out": held_out,
        "cross_validation": cv,
        "packed": {"dtype": dtype, "held_out_mean_dice": packed_scores["mean_dice"], **_file_facts(packed)},
        "compute": {
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "device": cfg.device,
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "citation": list(dict.fromkeys([*citations(model.network, pretrained=True), *spec.references])),
    }
    atomic_write_json(out / "release.json", summary)
    atomic_write_text(out / "model_card.md", model_card(summary))
    if cfg.into:
        summary = _install(packed, summary, cfg.into)
    return summary


# this machine's paths and how the run was driven: not part of what a release is
_NOT_IN_COMMAND = ("bundle", "dataset_dir", "out_dir", "into", "install_from", "pretrained", "device", "resume",
                   "overwrite", "quiet")  # fmt: skip


def release_command(cfg: ReleaseConfig) -> str:
    """The ``volmae-release`` command that makes this release again on other data folders: the bundle and every
    setting that differs from its default (paths and run control left out)."""
    parts = ["volmae-release", "--bundle", cfg.bundle]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _NOT_IN_COMMAND or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        parts += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return " ".join(parts)


def install_release(folder: str | os.PathLike, into: str | None) -> dict:
    """Install the finished release in ``folder`` (its ``model.pt`` and ``release.json``) into bundle ``into``."""
    if not into:
        raise ConfigError("install_from: name the bundle folder to install into (into=...)")
    folder = Path(folder)
    missing = [f for f in ("model.pt", "release.json") if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"install_from={folder}: not a finished release (missing {', '.join(missing)})")
    summary = json.loads((folder / "release.json").read_text())
    return _install(folder / "model.pt", summary, into)


def _evaluate(cfg: ReleaseConfig, model: ModelArtifact, data: str, out: Path, cases: list[str] | None = None):
    return evaluate(
        EvaluateConfig(None, data, str(out), fold=cfg.fold, cases=cases, device=cfg.device, cpu_bf16=cfg.cpu_bf16,
                       num_overlays=0, quiet=True),
        model,
    )  # fmt: skip


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), and whether it multiplies bf16 fast (what the compute figures hinge
    on)."""
    name = cpu_info("model name") or platform.processor() or platform.machine()
    return f"{name}, {'with' if cpu_has_bf16_units() else 'without'} bf16 units"


def _portable(settings: dict) -> dict:
    """A stage's settings without this machine's paths (they say nothing about the recipe)."""
    return {k: v for k, v in settings.items() if k not in ("dataset_dir", "out_dir", "cache_dir", "pretrained")}


def _inner_folds(cfg: ReleaseConfig, data: str) -> list[int]:
    """The ``cfg.cv_folds`` training folds cross-validation scores (every fold but the held-out one, in order)."""
    folds = dataset_folds(load_msd_datalist(data))
    inner = [i for i in range(len(folds)) if i != cfg.fold][: cfg.cv_folds]
    if len(inner) < cfg.cv_folds:
        raise ConfigError(f"cv_folds={cfg.cv_folds}: {data} has {len(inner)} training folds; use at most that")
    return inner


def _cross_validate(cfg: ReleaseConfig, ft_cfg: FinetuneConfig, data: str, out: Path) -> dict:
    """The recipe trained without each of ``cfg.cv_folds`` training folds and scored on it (the held-out fold
    untouched); per-class Dice pooled over every scored case."""
    datalist = load_msd_datalist(data)
    seconds, folds, per_case = 0.0, [], {}
    for i in _inner_folds(cfg, data):
        fold_train, fold_scored = inner_fold(datalist, cfg.fold, i)
        scored = sorted(it["case"] for it in fold_scored)
        run = finetune(replace(ft_cfg, **_run_dir(cfg, out / f"fold{i}"), val_every=0), Cases(datalist, fold_train, []))
        seconds += _trained_seconds(run.history)
        report = _evaluate(cfg, ModelArtifact.load(run.model_path, role="segmentation"), data, out / f"fold{i}_eval",
                           scored)  # fmt: skip
        folds.append({"fold": i, "train_cases": len(fold_train), **_scores(report)})
        for c in report.cases:
            per_case[c.case] = c.dice
    names = list(folds[0]["dice"])
    dice = {n: sum(d[n] for d in per_case.values()) / len(per_case) for n in names}
    return {"folds": folds, "cases": len(per_case), "dice": dice, "mean_dice": sum(dice.values()) / len(dice),
            "seconds": seconds}  # fmt: skip


def _pack(cfg: ReleaseConfig, model: ModelArtifact, data: str, out: Path, held_out: dict):
    """``(path, dtype name, held-out scores)`` of the packed model: ``cfg.dtype`` when its mean Dice is within
    ``dice_tolerance`` of fp32's, else fp32."""
    dtype = cfg.dtype
    packed = replace(model, weights=_cast(model.weights, DTYPES[dtype]))
    scores = held_out
    if dtype != "fp32":
        scores = _scores(_evaluate(cfg, _as_float(packed), data, out / f"held_out_{dtype}"))
        if abs(scores["mean_dice"] - held_out["mean_dice"]) > cfg.dice_tolerance:
            dtype, packed, scores = "fp32", model, held_out
    path = out / "model.pt"
    packed.save(path)
    mb = path.stat().st_size / 2**20
    if mb > cfg.max_mb:
        raise ConfigError(f"{path}: {mb:.1f} MB packed in {dtype}, over max_mb={cfg.max_mb}; release a smaller preset")
    return path, dtype, scores


def _as_float(model: ModelArtifact) -> ModelArtifact:
    return replace(model, weights=_cast(model.weights, torch.float32))


def _install(packed: Path, summary: dict, into: str) -> dict:
    """The packed release into bundle ``into``: ``models/model.pt`` (the state dict of its network_def, in the
    packed float type), ``models/release.json``, ``models/model_card.md``; returns the summary with the installed
    file's size and sha256."""
    model = ModelArtifact.load(packed, role="segmentation")
    root = find_bundle(into)
    if summary.get("bundle") != root.name:
        raise ConfigError(f"{packed}: a release of bundle {summary.get('bundle')!r}, not of {root.name!r}")
    check_fits_bundle(model, root, f"the release in {packed}")
    path = write_bundle_weights(model.weights, root, overwrite=True)
    final = dict(summary, packed=dict(summary["packed"], **_file_facts(path)))
    atomic_write_json(root / "models" / "release.json", final)
    atomic_write_text(root / "models" / "model_card.md", model_card(final))
    return final


def _dice_row(scores: dict) -> str:
    per = ", ".join(f"{n} {v:.4f}" for n, v in scores["dice"].items())
    return f"mean **{scores['mean_dice']:.4f}** ({per})"


def model_card(s: dict) -> str:
    """The model card (Markdown) of a release summary."""
    ho, cv, pk, comp = s["held_out"], s["cross_validation"], s["packed"], s["compute"]
    hd = ", ".join(f"{n} {v:.2f}" for n, v in ho["hd95"].items())
    minutes = ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f} min" for k, v in comp["seconds"].items())
    cv_line = (
        f"{_dice_row(cv)} over {cv['cases']} cases of {len(cv['folds'])} training folds, each scored by a model "
        "trained without it"
        if cv
        else "not measured for this release (`volmae-release --cv-folds 4` measures it)"
    )
    recipe, pre = s["recipe"]["finetune"], s["recipe"]["pretrain"]
    made_by = f"volmae-release --bundle {s['bundle']}"  # records older than the command field
    pre_line = (
        f"reused {pre['reused']}"
        if "reused" in pre
        else f"{pre['preset']}, {pre['epochs']} epochs of {pre['batch_size']} volumes over the training images (labels "
        f"unused), AdamW {pre['lr']:g}"
    )
    return (
        f"# volmae {s['bundle']} model\n\n"
        f"{s['task']}. Classes: {', '.join(f'{k} {v}' for k, v in s['classes'].items())}.\n\n"
        f"- made by volmae {s['volmae_version']} on {s['date']} (`{s.get('command') or made_by}`)\n"
        f"- recipe `{s['recipe']['name']}`: {s['recipe']['title']}; fine-tuning {recipe['preset']} for "
        f"{recipe['steps']} steps of {recipe['batch_size']} x {recipe['num_samples']} crops of "
        f"{' x '.join(map(str, recipe['roi_size']))}, AdamW {recipe['lr']:g}, encoder and decoder transferred\n"
        f"- pretraining: {pre_line}\n"
        f"- data: {s['data']['source']}; {s['data']['train_cases']} training cases, fold {s['data']['fold_held_out']}"
        f" ({s['data']['held_out_cases']} cases) held out\n"
        f"- held-out Dice: {_dice_row(ho)}; HD95 mm: {hd}\n"
        f"- cross-validated Dice (training folds only): {cv_line}\n"
        f"- weights: {pk['dtype']}, {pk['bytes'] / 2**20:.1f} MB, sha256 {pk['sha256']}; held-out mean Dice with "
        f"these weights {pk['held_out_mean_dice']:.4f}\n"
        f"- training time: {minutes} on {comp['cpu_count']} CPU cores ({comp['cpu']}), device {comp['device']}\n"
        f"- licence: weights {s['licence']['weights'] or 'as the data'}; data {s['licence']['data']}\n"
        "- intended use: research only, not for clinical use\n\n"
        "## Cite\n\n" + "".join(f"- {c}\n" for c in s["citation"])
    )
