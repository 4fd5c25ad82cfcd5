"""A study's report from its finished runs: tables, the paired tests, the plots, partial studies."""

import csv
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from volmae.errors import DataError
from volmae.evaluation.compare import compare_pooled
from volmae.study import report_study

CASES = [f"c{i}" for i in range(6)]


def fake_run(study: Path, preset: str, init: str, fraction: float, seed: int, dice: list[float], curve=(), cases=CASES):
    """A finished run's folder: result.json and eval/metrics.csv with per-case Dice ``dice`` (both classes)."""
    run = study / "runs" / f"{preset}_{init}_{fraction * 100:g}pct_s{seed}"
    (run / "eval").mkdir(parents=True)
    with open(run / "eval" / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "class", "dice", "hd95", "voxels_true", "voxels_pred"])
        for case, d in zip(cases, dice):
            w.writerows([[case, "a", d, 2.0, 10, 10], [case, "b", d, 2.0, 10, 10]])
    result = {
        "kind": "finetune", "preset": preset, "family": "cnn" if preset == "dynunet" else "vit", "init": init,
        "fraction": fraction, "labeled_cases": round(16 * fraction), "seed": seed, "epochs": 3, "steps": 30,
        "train_seconds": 60.0, "eval_cases": len(dice), "dice": float(np.mean(dice)), "hd95": None,
        "dice_per_class": {"a": float(np.mean(dice)), "b": float(np.mean(dice))},
        "curve": [{"step": s, "val_dice": v} for s, v in curve],
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(result))
    return run


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "study"
    for fraction in (0.25, 1.0):
        for seed in (0, 1):
            base = rng.uniform(0.5, 0.8, len(CASES))
            curve = [(10, 0.3), (20, 0.5)] if fraction == 0.25 else ()
            fake_run(out, "vit-tiny", "scratch", fraction, seed, list(base), curve)
            fake_run(out, "vit-tiny", "pretrained", fraction, seed, list(base + 0.02 + 0.01 * seed), curve)
            fake_run(out, "dynunet", "scratch", fraction, seed, list(base + 0.05), curve)
    return out


def test_summary_paired_tests_and_plots(study):
    rep = report_study(study)
    assert len(rep.runs) == 12
    row = next(s for s in rep.summary if (s["preset"], s["init"], s["fraction"]) == ("vit-tiny", "pretrained", 0.25))
    dice = [r["dice"] for r in rep.runs if (r["preset"], r["init"], r["fraction"]) == ("vit-tiny", "pretrained", 0.25)]
    assert row["runs"] == 2 and row["dice_mean"] == pytest.approx(np.mean(dice))
    assert row["dice_std"] == pytest.approx(np.std(dice, ddof=1)) and np.isnan(row["hd95_mean"])
    paired = next(
        p for p in rep.paired if p["comparison"] == "vit-tiny pretrained vs scratch" and p["fraction"] == 0.25
    )
    runs = study / "runs"
    expected = compare_pooled(
        [(runs / f"vit-tiny_pretrained_25pct_s{s}/eval", runs / f"vit-tiny_scratch_25pct_s{s}/eval") for s in (0, 1)]
    )
    assert paired["pairs"] == 12 and paired["seeds"] == 2
    assert paired["diff"] == pytest.approx(expected.mean_diff) == pytest.approx(0.025)
    assert (paired["ci_low"], paired["wilcoxon_p"]) == (expected.ci95[0], expected.wilcoxon_p)
    peer = next(p for p in rep.paired if p["comparison"] == "dynunet vs vit-tiny pretrained" and p["fraction"] == 1.0)
    assert peer["diff"] == pytest.approx(0.05 - 0.025)
    gap = next(p for p in rep.paired if p["comparison"] == "dynunet vs vit-tiny scratch" and p["fraction"] == 1.0)
    assert gap["diff"] == pytest.approx(0.05) and gap["pairs"] == 12  # the gap pretraining is to close
    for name in ("runs.csv", "summary.csv", "paired.csv", "summary.md", "dice_vs_labels.png", "convergence.png"):
        assert study / name in rep.files
    assert matplotlib.image.imread(study / "dice_vs_labels.png").ndim == 3
    header = (study / "runs.csv").read_text().splitlines()[0].split(",")
    assert {"preset", "init", "fraction", "labeled_cases", "seed", "dice", "dice_a", "dice_b"} <= set(header)
    assert "| vit-tiny pretrained vs scratch | 0.25 | 2 | 12 |" in (study / "summary.md").read_text()


def test_a_partial_study_pairs_only_finished_twins(study):
    (study / "runs" / "vit-tiny_scratch_25pct_s1" / "result.json").unlink()  # still running
    for run in (study / "runs").glob("*_100pct_*"):
        (run / "result.json").unlink()
    rep = report_study(study)
    paired = [p for p in rep.paired if p["comparison"] == "vit-tiny pretrained vs scratch"]
    assert [(p["fraction"], p["seeds"], p["pairs"]) for p in paired] == [(0.25, 1, 6)]
    assert len(rep.runs) == 5


def test_peer_gap_is_reported_before_any_pretrained_run(study):
    for run in (study / "runs").glob("vit-tiny_pretrained_*"):
        (run / "result.json").unlink()  # pretraining still to come
    rep = report_study(study)
    assert {p["comparison"] for p in rep.paired} == {"dynunet vs vit-tiny scratch"}
    gap = next(p for p in rep.paired if p["fraction"] == 0.25)
    assert gap["diff"] == pytest.approx(0.05) and gap["pairs"] == 12
    assert "| dynunet vs vit-tiny scratch | 0.25 | 2 | 12 |" in (study / "summary.md").read_text()


def test_no_finished_run_and_mismatched_cases(tmp_path):
    with pytest.raises(DataError, match="no finished fine-tuning run"):
        report_study(tmp_path / "empty")
    fake_run(tmp_path / "s", "vit-tiny", "scratch", 0.5, 0, [0.5, 0.6])
    fake_run(tmp_path / "s", "vit-tiny", "pretrained", 0.5, 0, [0.5, 0.6], cases=["x0", "x1"])
    rep = report_study(tmp_path / "s")
    assert "scored different cases" in rep.paired[0]["error"]
    assert not (tmp_path / "s" / "convergence.png").exists()  # no run recorded a curve


def test_folds_pool_into_one_report(study, tmp_path):
    other = [f"d{i}" for i in range(4)]  # fold 1 holds out other cases
    fold1 = tmp_path / "fold1"
    for seed in (0, 1):
        fake_run(fold1, "vit-tiny", "scratch", 0.25, seed, [0.6] * 4, cases=other)
        fake_run(fold1, "vit-tiny", "pretrained", 0.25, seed, [0.7, 0.7, 0.5, 0.7], cases=other)
    pooled = tmp_path / "pooled"
    rep = report_study(pooled, pool=[study, fold1, pooled])  # out_dir listed again: counted once
    assert len(rep.runs) == 12 + 4 and (pooled / "summary.md").is_file()
    row = next(s for s in rep.summary if (s["preset"], s["init"], s["fraction"]) == ("vit-tiny", "pretrained", 0.25))
    assert row["runs"] == 4 and row["seeds"] == "0 1; 2 studies"
    test = "vit-tiny pretrained vs scratch"
    paired = next(p for p in rep.paired if p["comparison"] == test and p["fraction"] == 0.25)
    runs = [study / "runs", fold1 / "runs"]
    pairs = [
        (r / f"vit-tiny_pretrained_25pct_s{s}/eval", r / f"vit-tiny_scratch_25pct_s{s}/eval")
        for r in runs
        for s in (0, 1)
    ]
    expected = compare_pooled(pairs)
    assert paired["pairs"] == 2 * 6 + 2 * 4 and paired["seeds"] == 4
    assert paired["diff"] == pytest.approx(expected.mean_diff) == pytest.approx((12 * 0.025 + 8 * 0.05) / 20)
    assert not any(p["fraction"] == 1.0 and p["pairs"] != 12 for p in rep.paired)  # fold 1 has no 100 % runs


def test_the_cli_pools_folds_into_a_report_folder(study_task, tmp_path, capsys):
    from volmae.cli.study import main
    from volmae.study import StudyConfig
    from volmae.utils.io import config_yaml

    folds = [tmp_path / f"f{f}" for f in (0, 1)]
    for f, folder in enumerate(folds):
        cases = [f"{f}_{c}" for c in CASES]
        fake_run(folder, "vit-tiny", "scratch", 1.0, 0, [0.6] * 6, cases=cases)
        fake_run(folder, "vit-tiny", "pretrained", 1.0, 0, [0.65] * 6, cases=cases)
        (folder / "study.yaml").write_text(config_yaml(StudyConfig(str(study_task), str(folder), fold=f)))
    pooled = tmp_path / "pooled"
    flags = ["--dataset-dir", str(study_task), "--out-dir", str(pooled), "--report-only"]
    assert main([*flags, "--pool-studies", *map(str, folds)]) == 0
    out = capsys.readouterr().out
    assert "4 finished fine-tuning runs pooled from 2 studies" in out
    assert "| vit-tiny pretrained vs scratch | 1 | 2 | 12 | 0.6500 | 0.6000 | +0.0500 |" in out
    assert (pooled / "dice_vs_labels.png").is_file()
    flags[3] = str(tmp_path / "pooled_7_steps")
    assert main([*flags, "--steps", "7", "--pool-studies", *map(str, folds)]) == 2  # another design: refused
    assert "is a study of another design (steps: 400 -> 7)" in capsys.readouterr().err


def test_each_nnunet_budget_is_drawn_apart():
    from volmae.study.report import _style

    presets = ["nnunet-1x", "nnunet-4x", "resenc-tiny"]
    one, four = (_style(p, "scratch", presets) for p in presets[:2])
    assert (one["color"], one["marker"]) != (four["color"], four["marker"])
