"""Paired comparison of two evaluation folders."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from volmae.errors import DataError
from volmae.evaluation.compare import compare_evaluations, compare_pooled, main, read_case_dice
from volmae.evaluation.metrics import CaseMetrics, summarise

NAMES = ["Anterior", "Posterior"]


def _write_eval(folder, dice_per_case: dict[str, tuple[float, float]]):
    cases = [
        CaseMetrics(c, dict(zip(NAMES, d)), {n: 1.0 for n in NAMES}, {n: 10 for n in NAMES}, {n: 10 for n in NAMES})
        for c, d in dice_per_case.items()
    ]
    summarise(cases, NAMES).write(folder)
    return folder


def test_read_case_dice_averages_classes(tmp_path):
    _write_eval(tmp_path, {"a": (0.8, 0.6), "b": (1.0, 0.5)})
    assert read_case_dice(tmp_path) == pytest.approx({"a": 0.7, "b": 0.75})


def test_read_case_dice_leaves_unscored_classes_out(tmp_path):
    _write_eval(tmp_path, {"a": (0.8, float("nan")), "b": (1.0, 0.5)})  # a: Posterior not annotated
    assert read_case_dice(tmp_path) == pytest.approx({"a": 0.8, "b": 0.75})


def test_paired_difference_wins_and_wilcoxon(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.9, size=(20, 2))
    gain = rng.uniform(-0.01, 0.05, size=20)
    a = _write_eval(tmp_path / "a", {f"c{i}": tuple(base[i] + gain[i]) for i in range(20)})
    b = _write_eval(tmp_path / "b", {f"c{i}": tuple(base[i]) for i in range(20)})
    r = compare_evaluations(a, b)
    va, vb = (base + gain[:, None]).mean(1), base.mean(1)
    assert r.n == 20
    assert r.mean_diff == pytest.approx(float(gain.mean()), abs=1e-5)  # CSV keeps 6 decimals
    assert r.wins_a == int((gain > 0).sum()) and r.wins_b == int((gain < 0).sum())
    assert r.ci95[0] < r.mean_diff < r.ci95[1]
    assert r.wilcoxon_p == pytest.approx(float(wilcoxon(va, vb).pvalue), rel=1e-3)
    swapped = compare_evaluations(b, a)
    assert swapped.mean_diff == pytest.approx(-r.mean_diff) and swapped.wins_a == r.wins_b


def test_identical_evaluations_have_no_p_value(tmp_path):
    a = _write_eval(tmp_path / "a", {"x": (0.5, 0.5), "y": (0.7, 0.9)})
    r = compare_evaluations(a, a)
    assert r.mean_diff == 0 and r.wins_a == r.wins_b == 0 and np.isnan(r.wilcoxon_p)


def test_different_cases_are_refused(tmp_path):
    a = _write_eval(tmp_path / "a", {"x": (0.5, 0.5)})
    b = _write_eval(tmp_path / "b", {"y": (0.5, 0.5)})
    with pytest.raises(DataError, match="different cases"):
        compare_evaluations(a, b)


def test_missing_metrics_named(tmp_path, capsys):
    with pytest.raises(DataError, match="no metrics.csv"):
        read_case_dice(tmp_path)
    assert main([str(tmp_path), str(tmp_path)]) == 2
    assert "no metrics.csv" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2


def test_pooled_pairs_concatenate_cases(tmp_path, capsys):
    rng = np.random.default_rng(2)
    folders, diffs, va, vb = [], [], [], []
    for k in range(2):
        base = rng.uniform(0.6, 0.9, size=(15, 2))
        gain = rng.uniform(-0.02, 0.04, size=15)
        a = _write_eval(tmp_path / f"a{k}", {f"c{i}": tuple(base[i] + gain[i]) for i in range(15)})
        b = _write_eval(tmp_path / f"b{k}", {f"c{i}": tuple(base[i]) for i in range(15)})
        folders += [a, b]
        diffs.append(gain)
        va.append((base + gain[:, None]).mean(1))
        vb.append(base.mean(1))
    r = compare_pooled([(folders[0], folders[1]), (folders[2], folders[3])])
    gain = np.concatenate(diffs)
    assert r.n == 30  # the same case ids in both pairs count twice: (pair, case)
    assert r.mean_diff == pytest.approx(float(gain.mean()), abs=1e-5)
    assert r.wins_a == int((gain > 0).sum())
    assert r.wilcoxon_p == pytest.approx(float(wilcoxon(np.concatenate(va), np.concatenate(vb)).pvalue), rel=1e-3)
    assert main([str(f) for f in folders]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[-1].startswith("pooled a")
    assert main([str(f) for f in folders[:3]]) == 2  # an odd number of folders is not a set of pairs
    with pytest.raises(ValueError, match=r"pairs=\[\]"):
        compare_pooled([])
