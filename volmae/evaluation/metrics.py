"""Per-case, per-class Dice and HD95 (MONAI's definitions), written as CSV + summary JSON + a printed table.

Classes are evaluated one at a time as binary masks, so a 14-class 512 x 512 x 300 CT never needs a one-hot
copy. Conventions: a class absent from both prediction and truth has Dice 1 and HD95 0 (a correct empty answer);
absent from exactly one, Dice 0 and HD95 ``nan`` (undefined distance; counted in ``n_hd95_undefined``). A class not
*annotated* in a case (``scored=False``: a partially annotated task) has Dice and HD95 ``nan`` and is left out of
that case's mean and of the class's statistics.
HD95 is in millimetres when a spacing is given.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.metrics.utils import get_mask_edges
from scipy.ndimage import distance_transform_edt
from scipy.spatial import KDTree

from volmae.utils.io import atomic_write_json, atomic_write_text

__all__ = [
    "CaseMetrics",
    "EvaluationReport",
    "case_metrics",
    "dice_scores",
    "scored_classes",
    "hd95",
    "label_masks",
    "summarise",
    "defined_mean",
]

# Where a mask's edge voxels fill more than this fraction of the edges' bounding box, their distances come from one
# distance transform of the box instead of a KD-tree query per voxel (see ``hd95``).
EDT_FRACTION = 0.05


def label_masks(label_map: torch.Tensor, classes: Sequence[int | Sequence[int]]) -> torch.Tensor:
    """``D H W`` integer map -> ``K D H W`` bool masks, one per entry of ``classes``: a label value, or a list of
    values for a region (BraTS tumour core = ``[2, 3]``)."""
    lm = torch.as_tensor(label_map)
    lm = lm[0] if lm.ndim == 4 else lm
    return torch.stack(
        [torch.isin(lm, torch.tensor(list(c), dtype=lm.dtype)) if isinstance(c, Sequence) else lm == c for c in classes]
    )


def scored_classes(labels: Mapping[int, str], regions: Mapping[str, Sequence[int]] | None = None):
    """``(classes, names)`` a task is scored on, for :func:`label_masks` and the reports: one nested region per entry
    of ``regions`` (BraTS tumour core = labels [2, 3]), else every foreground label."""
    if regions:
        return [list(v) for v in regions.values()], list(regions)
    classes = sorted(k for k in labels if k > 0)
    return classes, [labels[k] for k in classes]


def dice_scores(pred_masks: torch.Tensor, true_masks: torch.Tensor) -> list[float]:
    """volmae's Dice, the one every stage reports: per channel of ``K D H W`` boolean masks,
    ``2 |P & T| / (|P| + |T|)``, and 1.0 where a class is absent from both (a correct empty answer)."""
    if pred_masks.shape != true_masks.shape:
        raise ValueError(f"prediction {tuple(pred_masks.shape)} and truth {tuple(true_masks.shape)} differ")
    p, t = pred_masks.bool().flatten(1), true_masks.bool().flatten(1)
    inter = (p & t).sum(1).double()
    size = p.sum(1).double() + t.sum(1).double()
    return torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size)).tolist()


def _edge_distances(src: np.ndarray, dst: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) from each ``True`` voxel of ``src`` to the nearest one of ``dst`` (same grid)."""
    if src.sum() > EDT_FRACTION * src.size:
        return distance_transform_edt(~dst, sampling=sampling)[src]
    return KDTree(np.argwhere(dst) * sampling, leafsize=32).query(np.argwhere(src) * sampling, k=1)[0]


def hd95(pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray, spacing: Sequence[float] | None = None):
    """The 95th-percentile symmetric Hausdorff distance between two non-empty ``D H W`` boolean masks (mm with
    ``spacing``): MONAI's ``compute_hausdorff_distance(percentile=95)``, the same exact Euclidean distances between
    the masks' edge voxels (MONAI's ``get_mask_edges``, cropped to their bounding box).

    MONAI's CPU path always queries a KD-tree for every edge voxel, which is slow when millions of predicted edge
    voxels lie far from a small truth: 17 s of a 20 s call for the whole tumour of a barely trained BraTS model on
    one 240 x 240 x 155 case. Where the edge voxels fill over ``EDT_FRACTION`` of their box, one distance transform
    of the box (linear in its voxels, 1.9 s there) answers instead; sparse edges keep the KD-tree, faster for them.
    """
    p, t = (np.asarray(m.cpu().numpy() if isinstance(m, torch.Tensor) else m, dtype=bool) for m in (pred, true))
    if not p.any() or not t.any():
        raise ValueError("hd95: both masks must be non-empty (the distance to an empty mask is undefined)")
    edges_pred, edges_true = get_mask_edges(p, t, crop=True)
    sampling = np.ones(p.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    pairs = ((edges_pred, edges_true), (edges_true, edges_pred))
    return max(float(np.quantile(_edge_distances(a, b, sampling), 0.95)) for a, b in pairs)


@dataclass
class CaseMetrics:
    case: str
    dice: dict[str, float]
    hd95: dict[str, float]
    voxels_true: dict[str, int]
    voxels_pred: dict[str, int]


def case_metrics(
    pred_masks: torch.Tensor,
    true_masks: torch.Tensor,
    names: Sequence[str],
    case: str,
    spacing: Sequence[float] | None = None,
    scored: Sequence[bool] | None = None,
) -> CaseMetrics:
    """Dice and HD95 for each of the ``K`` channels of ``K D H W`` boolean masks (``nan`` where ``scored`` is
    False: the class is not annotated in this case)."""
    if pred_masks.shape != true_masks.shape:
        raise ValueError(f"{case}: prediction {tuple(pred_masks.shape)} and truth {tuple(true_masks.shape)} differ")
    if scored is not None and len(scored) != len(names):
        raise ValueError(f"{case}: scored has {len(scored)} entries for {len(names)} classes")
    dice, hd, nt, npred = {}, {}, {}, {}
    scores = dice_scores(pred_masks, true_masks)
    for k, name in enumerate(names):
        p, t = pred_masks[k].bool(), true_masks[k].bool()
        sp, st = int(p.sum()), int(t.sum())
        nt[name], npred[name] = st, sp
        if scored is not None and not scored[k]:
            dice[name], hd[name] = math.nan, math.nan
            continue
        dice[name] = scores[k]
        if sp == 0 and st == 0:
            hd[name] = 0.0
            continue
        if sp == 0 or st == 0:
            hd[name] = math.nan
            continue
        hd[name] = hd95(p, t, spacing)
    return CaseMetrics(case, dice, hd, nt, npred)


@dataclass
class EvaluationReport:
    cases: list[CaseMetrics]
    names: list[str]
    summary: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        out = []
        for c in self.cases:
            for n in self.names:
                out.append(
                    {
                        "case": c.case,
                        "class": n,
                        "dice": c.dice[n],
                        "hd95": c.hd95[n],
                        "voxels_true": c.voxels_true[n],
                        "voxels_pred": c.voxels_pred[n],
                    }
                )
        return out

    def table(self) -> str:
        """A fixed-width table: one line per class plus the foreground mean."""
        lines = [f"{'class':<16}{'Dice mean':>10}{'Dice std':>10}{'HD95 mean':>11}{'HD95 std':>10}{'n':>5}"]
        for n in self.names + ["mean"]:
            s = self.summary[n]
            lines.append(
                f"{n:<16}{s['dice_mean']:>10.4f}{s['dice_std']:>10.4f}{s['hd95_mean']:>11.2f}"
                f"{s['hd95_std']:>10.2f}{s['n']:>5d}"
            )
        return "\n".join(lines)

    def write(self, folder: str | Path, extra: Mapping | None = None) -> tuple[Path, Path]:
        """``metrics.csv`` (per case and class) and ``summary.json`` (mean/std per class), written atomically."""
        folder = Path(folder)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["case", "class", "dice", "hd95", "voxels_true", "voxels_pred"])
        w.writeheader()
        for r in self.rows():
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
        csv_path = atomic_write_text(folder / "metrics.csv", buf.getvalue())
        json_path = atomic_write_json(
            folder / "summary.json",
            {**(extra or {}), "classes": self.names, "num_cases": len(self.cases), **self.summary},
        )
        return csv_path, json_path


def _defined(values: Iterable[float | None]) -> np.ndarray:
    """The values that are defined: not ``nan`` (an undefined HD95, a class not annotated) and not ``None`` (a
    ``nan`` read back from JSON)."""
    return np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)


def defined_mean(values: Iterable[float | None]) -> float:
    """Mean of the defined values (see :func:`_defined`); ``nan`` when none is."""
    v = _defined(values)
    return float(v.mean()) if v.size else math.nan


def _stats(values: list[float]) -> tuple[float, float, int]:
    v = _defined(values)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std()), int(v.size)


def summarise(cases: list[CaseMetrics], names: Sequence[str]) -> EvaluationReport:
    """Mean/std over cases per class, and ``mean``: each case's foreground-mean Dice / HD95, then over cases."""
    summary: dict[str, dict] = {}
    for n in names:
        dm, ds, k = _stats([c.dice[n] for c in cases])
        hm, hs, _ = _stats([c.hd95[n] for c in cases])
        summary[n] = {
            "dice_mean": dm,
            "dice_std": ds,
            "hd95_mean": hm,
            "hd95_std": hs,
            "n": k,
            "n_hd95_undefined": sum(1 for c in cases if math.isnan(c.hd95[n]) and not math.isnan(c.dice[n])),
        }
    per_case_dice = [defined_mean(c.dice[n] for n in names) for c in cases]  # over the classes scored in the case
    per_case_hd = [defined_mean(c.hd95[n] for n in names) for c in cases]
    dm, ds, k = _stats(per_case_dice)
    hm, hs, _ = _stats(per_case_hd)
    summary["mean"] = {"dice_mean": dm, "dice_std": ds, "hd95_mean": hm, "hd95_std": hs, "n": k}
    return EvaluationReport(list(cases), list(names), summary)
