"""Evaluate a fine-tuned model on held-out cases, in each case's original voxel space.

Predictions are mapped back to the input grid (``Predictor.predict_file``) and compared with the label file as
stored, so the figures do not depend on the resampling used for training. Writes ``metrics.csv``,
``summary.json``, ``pictures/overlay_<case>.png`` and optionally ``predictions/<case>.nii.gz``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from volmae.artifact.model import ModelArtifact
from volmae.data import load_msd_datalist, load_volume, preflight, split_fold
from volmae.errors import DataError
from volmae.evaluation.metrics import (
    EvaluationReport,
    case_metrics,
    defined_mean,
    label_masks,
    scored_classes,
    summarise,
)
from volmae.evaluation.pictures import save_overlay_png
from volmae.inference.predictor import predictor_for
from volmae.utils.io import atomic_save_nifti
from volmae.utils.runtime import resolve_device

__all__ = ["EvaluateConfig", "evaluate", "evaluate_predictions"]


@dataclass
class EvaluateConfig:
    model: str | None
    dataset_dir: str
    out_dir: str = "runs/evaluate"
    fold: int = 0
    cases: list[str] | None = None
    device: str = "auto"
    sw_batch_size: int = 4
    overlap: float = 0.5
    amp: bool = True
    tta_flips: list[int] | None = None
    largest_component: bool = False
    compile: bool = False
    cpu_bf16: bool = False
    num_overlays: int = 4
    save_predictions: bool = False
    quiet: bool = False
    bundle: str | None = None  # a bundle (name or folder): its trained weights, or with ``model`` that file's


def _spacing(affine: np.ndarray) -> list[float]:
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]


def evaluate(cfg: EvaluateConfig, model: ModelArtifact | None = None) -> EvaluationReport:
    """Segment the held-out cases of ``fold`` (or ``cases``) with ``model`` (default: the model ``cfg.model`` /
    ``cfg.bundle`` name) and write per-case / per-class Dice and HD95 (per region for models with label regions, e.g.
    BraTS TC / WT / ET)."""
    if not cfg.dataset_dir:
        raise DataError("no dataset: pass dataset_dir, the MSD task folder whose held-out fold is scored")
    device = resolve_device(cfg.device)
    predictor = predictor_for(cfg, device, model)
    labels = dict(predictor.task.labels)
    datalist = load_msd_datalist(cfg.dataset_dir)
    items = datalist.by_case(cfg.cases) if cfg.cases else split_fold(datalist, cfg.fold)[1]
    preflight(items, predictor.task.in_channels, True, "evaluation datalist", predictor.prep.pixdim)
    # nested tumour regions are what BraTS is scored on, one mask per region: the model's (sigmoid regions), else
    # the task's (a softmax label map cut into the regions, as nnU-Net scores BraTS)
    classes, names = scored_classes(labels, predictor.task.regions or datalist.regions)

    def segment(item: dict) -> tuple[np.ndarray, np.ndarray]:
        pred = predictor.predict_file(item)
        return pred.labels[0].numpy(), pred.affine.numpy()

    t0 = time.time()
    results = _score_cases(items, datalist, labels, classes, names, segment, cfg, Path(cfg.out_dir))
    report = summarise(results, names)
    report.write(
        Path(cfg.out_dir),
        extra={
            "model": (model.source if model is not None else None)
            or " in bundle ".join(str(x) for x in (cfg.model, cfg.bundle) if x),
            "dataset": datalist.name,
            "fold": cfg.fold,
            "inference": {
                "overlap": cfg.overlap,
                "tta_flips": cfg.tta_flips or [],
                "largest_component": cfg.largest_component,
            },
            "seconds": round(time.time() - t0, 1),
        },
    )
    if not cfg.quiet:
        print(report.table())
    return report


def _score_cases(items, datalist, labels, classes, names, segment, cfg, out: Path) -> list:
    """Per-case metrics of ``segment(item) -> (label map, affine)`` against each item's label file as stored (with
    ``cfg``'s overlays and saved predictions); what :func:`evaluate` and :func:`evaluate_predictions` share."""
    results = []
    for i, item in enumerate(items):
        seg, pred_affine = segment(item)
        truth, affine = load_volume(item["label"])
        truth = np.rint(truth).astype(np.int16)
        if seg.shape != truth.shape:
            raise DataError(f"{item['label']}: label shape {truth.shape} differs from the prediction {seg.shape}")
        present = datalist.annotated.get(item["case"])  # partially annotated task: score what this case masks
        res = case_metrics(
            label_masks(torch.from_numpy(seg), classes),
            label_masks(torch.from_numpy(truth), classes),
            names,
            item["case"],
            _spacing(affine),
            None if present is None else [set(c if isinstance(c, list) else [c]) <= set(present) for c in classes],
        )
        results.append(res)
        if cfg.save_predictions:
            atomic_save_nifti(seg, pred_affine, out / "predictions" / f"{item['case']}.nii.gz")
        if i < cfg.num_overlays:
            img, _ = load_volume(item["image"] if isinstance(item["image"], str) else item["image"][0])
            img = img[..., 0] if img.ndim == 4 else img  # stacked channels (X Y Z C): picture the first
            mean_dice = defined_mean(res.dice.values())
            save_overlay_png(
                img,
                truth,
                seg,
                out / "pictures" / f"overlay_{item['case']}.png",
                labels,
                title=f"{item['case']}: mean Dice {mean_dice:.3f}",
            )
        if not cfg.quiet:
            print(f"  {item['case']}: " + ", ".join(f"{n} {res.dice[n]:.3f}" for n in names), flush=True)
    return results


def evaluate_predictions(cfg: EvaluateConfig, predictions: str | Path) -> EvaluationReport:
    """Score label maps made elsewhere (``predictions/<case>.nii.gz`` in each case's own voxel grid, e.g. nnU-Net's)
    exactly as :func:`evaluate` scores a volmae model: the held-out cases of ``cfg.fold`` (or ``cfg.cases``), the
    task's labels (and regions), Dice and HD95 per case and class. ``cfg.model`` is not used."""
    if not cfg.dataset_dir:
        raise DataError("no dataset: pass dataset_dir, the MSD task folder whose cases the predictions are of")
    folder = Path(predictions)
    datalist = load_msd_datalist(cfg.dataset_dir)
    items = datalist.by_case(cfg.cases) if cfg.cases else split_fold(datalist, cfg.fold)[1]
    missing = [it["case"] for it in items if not (folder / f"{it['case']}.nii.gz").is_file()]
    if missing:
        raise DataError(f"{folder}: no prediction for {len(missing)} case(s): {', '.join(missing[:5])}")
    labels = dict(datalist.labels)
    classes, names = scored_classes(labels, datalist.regions)

    def segment(item: dict) -> tuple[np.ndarray, np.ndarray]:
        seg, affine = load_volume(folder / f"{item['case']}.nii.gz")
        return np.rint(seg).astype(np.int16), affine

    t0 = time.time()
    report = summarise(_score_cases(items, datalist, labels, classes, names, segment, cfg, Path(cfg.out_dir)), names)
    report.write(
        Path(cfg.out_dir),
        extra={
            "predictions": str(folder),
            "dataset": datalist.name,
            "fold": cfg.fold,
            "seconds": round(time.time() - t0, 1),
        },
    )
    if not cfg.quiet:
        print(report.table())
    return report
