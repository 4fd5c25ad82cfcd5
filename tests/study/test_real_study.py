"""The study on real MRI: ``volmae-study`` end to end on 15 MSD hippocampus cases (3 held out), resumed and
extended; and its CLI errors."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.cli.conftest import assert_clean_error
from volmae.cli.study import main
from volmae.errors import ConfigError
from volmae.study import FinetuneRun, StudyConfig, run_study
from volmae.study.runner import RESULT, execute, read_result


def hippocampus_subset(source: Path, dest: Path, n: int = 15) -> Path:
    """An MSD task folder of the first ``n`` real cases (symlinks), no splits.json: a seeded 5-fold split."""
    meta = json.loads((source / "dataset.json").read_text())
    meta.update(training=meta["training"][:n], test=[], numTraining=n)
    for item in meta["training"]:
        for key in ("image", "label"):
            (dest / item[key]).parent.mkdir(parents=True, exist_ok=True)
            os.symlink((source / item[key]).resolve(), dest / item[key])
    (dest / "dataset.json").write_text(json.dumps(meta))
    return dest


@pytest.mark.realdata
def test_study_command_on_real_hippocampus(msd_hippocampus, tmp_path):
    task = hippocampus_subset(msd_hippocampus, tmp_path / "task")
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "volmae.cli.study", "--dataset-dir", str(task), "--out-dir", str(out),
           "--encoders", "vit-tiny", "--fractions", "0.5", "--seeds", "0", "--steps", "5",
           "--roi-size", "24", "32", "24", "--batch-size", "2", "--num-samples", "1", "--pretrain-batch-size", "6",
           "--pretrain-epochs", "1", "--curve-fractions", "0.5", "--curve-points", "2", "--curve-cases", "2",
           "--device", "cpu"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "3 of 3 fine-tuning runs of this command finished (4 of 4 runs in all)" in p.stdout
    runs = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*/result.json"))]
    assert {(r["preset"], r["init"]) for r in runs} == {
        ("vit-tiny", "scratch"),
        ("vit-tiny", "pretrained"),
        ("dynunet", "scratch"),
    }
    assert {r["eval_cases"] for r in runs} == {3} and {r["labeled_cases"] for r in runs} == {6}
    assert all(0.0 <= r["dice"] <= 1.0 for r in runs)
    assert {r["steps"] for r in runs} == {5}  # an exact budget: an epoch of 3 steps, then one cut to 2
    assert all([c["step"] for c in r["curve"]] == [3, 5] for r in runs)  # validated after each
    assert (out / "pretrain" / "vit-tiny" / "pictures").is_dir()  # reconstruction pictures of the pretraining
    report = (out / "runs" / "vit-tiny_pretrained_50pct_s0" / "pretrained_load_report.txt").read_text()
    assert "decoder weights (whole-network transfer): 24 tensors loaded" in report
    assert json.loads((out / "plan.json").read_text())[0]["name"] == "pretrain/vit-tiny"
    assert not list(out.glob("**/.claim"))
    for name in ("runs.csv", "summary.md", "paired.csv", "dice_vs_labels.png", "convergence.png"):
        assert (out / name).is_file()
    # a resume that adds a fraction counts this command's runs, and the report all the folder's finished ones
    more = [*cmd[: cmd.index("--encoders")], "--encoders", "none", "--fractions", "0.25", *cmd[cmd.index("--seeds") :]]
    p = subprocess.run(more, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "1 of 1 fine-tuning runs of this command finished (1 of 1 runs in all); the report holds 4" in p.stdout
    # the folder's record names both commands' runs, not only the last one's
    plan = [r["name"] for r in json.loads((out / "plan.json").read_text())]
    assert plan[0] == "pretrain/vit-tiny" and len(plan) == 5 and "finetune/dynunet_scratch_25pct_s0" in plan
    record = yaml.safe_load((out / "study.yaml").read_text())
    assert (record["encoders"], record["fractions"], record["peer"]) == (["vit-tiny"], [0.25, 0.5], "dynunet")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # finished: only the report
    assert again.returncode == 0 and "done in" not in again.stdout

    # resume and extension, through the Python API with the same settings as the command line above
    cfg = StudyConfig(
        str(task), str(out), encoders=["vit-tiny"], fractions=[0.5], seeds=[0], steps=5, roi_size=(24, 32, 24),
        batch_size=2, num_samples=1, pretrain_batch_size=6, pretrain_epochs=1, curve_fractions=[0.5],
        curve_points=2, curve_cases=2, device="cpu",
    )  # fmt: skip
    runs = run_study(cfg)
    assert execute(runs, cfg) == 0  # everything finished: nothing redone
    victim = next(r for r in runs if isinstance(r, FinetuneRun) and r.init == "pretrained")
    trained = (victim.out_dir / "trained.json").read_text()
    (victim.out_dir / RESULT).unlink()
    assert execute(runs, cfg) == 1  # only that run, and only its evaluation: training is not repeated
    assert (victim.out_dir / "trained.json").read_text() == trained
    more = replace(cfg, seeds=[0, 1], report_only=True)  # more seeds: accepted, the finished runs stay valid
    added = [r for r in run_study(more) if read_result(r.out_dir) is None]
    assert len(added) == 3 and all(r.seed == 1 for r in added)
    with pytest.raises(ConfigError, match="holds a study with other settings .*steps: 5 -> 7"):
        run_study(replace(cfg, steps=7))


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--fractions", "0", "0.5"], "fractions=[0.0, 0.5]: each must be in (0, 1]"),
        (["--encoders", "dynunet"], "pass it as peer"),
        (["--reuse-pretraining", "vit-tiny"], "expected PRESET=PATH"),
    ],
)
def test_bad_study_flags_are_one_line_errors(capsys, synthetic_task, tmp_path, extra, needle):
    rc = main(["--dataset-dir", str(synthetic_task), "--out-dir", str(tmp_path / "s"), "--device", "cpu", *extra])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-study", needle)
