"""Paired comparison of two evaluations of the same cases (e.g. MAE-initialised vs from-scratch fine-tuning).

Two models scored on the same held-out cases differ case by case far less than their means suggest, so the honest
question is paired: per case, how much better is ``a`` than ``b``? This reads the ``metrics.csv`` files written by
:meth:`volmae.evaluation.metrics.EvaluationReport.write`, pairs cases by id, and reports the mean per-case
difference of the foreground-mean Dice, a seeded bootstrap 95% interval of that mean, the number of cases each
model wins, and the two-sided Wilcoxon signed-rank p-value (scipy).

Several pairs (e.g. one per label subset or seed) pool into one test over every (pair, case):
``python -m volmae.evaluation.compare A1 B1 A2 B2 ...``; each pair must score the same cases.

Usage: ``python -m volmae.evaluation.compare RUN_A/eval RUN_B/eval``
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from volmae.errors import DataError
from volmae.evaluation.metrics import defined_mean

__all__ = ["PairedComparison", "compare_evaluations", "compare_pooled", "read_case_dice"]


def read_case_dice(folder: str | Path) -> dict[str, float]:
    """``metrics.csv`` in ``folder`` (or the file itself) -> {case: foreground-mean Dice}."""
    path = Path(folder)
    path = path / "metrics.csv" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: no metrics.csv here (run volmae-evaluate first)")
    per_case: dict[str, list[float]] = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"case", "dice"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns 'case' and 'dice', found {reader.fieldnames}")
        for row in reader:
            per_case[row["case"]].append(float(row["dice"]))
    if not per_case:
        raise DataError(f"{path}: no cases")
    # nan: a class not annotated in that case (a partially annotated task), left out of its mean
    return {c: defined_mean(v) for c, v in per_case.items()}


@dataclass
class PairedComparison:
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float  # a - b, mean over cases
    ci95: tuple[float, float]  # bootstrap interval of mean_diff
    wins_a: int
    wins_b: int
    wilcoxon_p: float

    def line(self, name_a: str = "a", name_b: str = "b") -> str:
        return (
            f"{name_a} {self.mean_a:.4f} vs {name_b} {self.mean_b:.4f}: diff {self.mean_diff:+.4f} "
            f"(95% CI {self.ci95[0]:+.4f} .. {self.ci95[1]:+.4f}), {name_a} better on {self.wins_a}/{self.n} cases, "
            f"Wilcoxon p={self.wilcoxon_p:.3g}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def compare_evaluations(a: str | Path, b: str | Path, n_boot: int = 10000, seed: int = 0) -> PairedComparison:
    """Paired comparison of the evaluations in folders ``a`` and ``b`` over the cases they share (all of them)."""
    return _paired(*_paired_dice(a, b), n_boot=n_boot, seed=seed)


def compare_pooled(
    pairs: Sequence[tuple[str | Path, str | Path]], n_boot: int = 10000, seed: int = 0
) -> PairedComparison:
    """One paired comparison over every (pair, case) of several ``(a, b)`` evaluation pairs.

    Each pair (e.g. pretrained vs scratch fine-tuned on one label subset) must score the same cases; the per-case
    differences of all pairs are pooled (``n`` = pairs x cases) for the mean, the bootstrap interval, the wins and
    the Wilcoxon test."""
    if not pairs:
        raise ValueError("pairs=[]: need at least one (a, b) pair of evaluations")
    return _pooled([_paired_dice(a, b) for a, b in pairs], n_boot, seed)


def _paired_dice(a: str | Path, b: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The per-case Dice of evaluations ``a`` and ``b``, in one case order; they must score the same cases."""
    da, db = read_case_dice(a), read_case_dice(b)
    if set(da) != set(db):
        only = sorted(set(da) ^ set(db))
        raise DataError(f"{a} and {b} scored different cases (e.g. {only[:3]}); compare the same fold")
    cases = sorted(da)
    return np.array([da[c] for c in cases]), np.array([db[c] for c in cases])


def _pooled(values: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int = 10000, seed: int = 0) -> PairedComparison:
    """:func:`_paired` over the concatenated values of several pairs."""
    return _paired(np.concatenate([a for a, _ in values]), np.concatenate([b for _, b in values]), n_boot, seed)


def _paired(va: np.ndarray, vb: np.ndarray, n_boot: int = 10000, seed: int = 0) -> PairedComparison:
    """Mean difference, seeded bootstrap 95 % interval, wins and Wilcoxon p of paired values ``va`` vs ``vb``."""
    diff = va - vb
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = float(wilcoxon(va, vb).pvalue) if np.any(diff != 0) else math.nan
    return PairedComparison(
        n=len(diff),
        mean_a=float(va.mean()),
        mean_b=float(vb.mean()),
        mean_diff=float(diff.mean()),
        ci95=(float(lo), float(hi)),
        wins_a=int((diff > 0).sum()),
        wins_b=int((diff < 0).sum()),
        wilcoxon_p=p,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or len(args) % 2:
        print("usage: python -m volmae.evaluation.compare EVAL_A EVAL_B [EVAL_A2 EVAL_B2 ...]", file=sys.stderr)
        return 2
    pairs = list(zip(args[0::2], args[1::2]))
    try:
        values = [_paired_dice(a, b) for a, b in pairs]  # each file read once
        for (a, b), (va, vb) in zip(pairs, values):
            print(_paired(va, vb).line(a, b))
        if len(pairs) > 1:
            print(_pooled(values).line("pooled a", "pooled b"))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
