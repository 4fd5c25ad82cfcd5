"""Running a study: claims shared between processes, pretraining sources, failing runs (the end-to-end run, its
resume and extension: test_real_study.py)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.study.conftest import tiny_study
from volmae.data.datalist import load_datalist, split_fold
from volmae.errors import ConfigError
from volmae.study import plan_study
from volmae.study.runner import (
    CLAIM,
    StudyRunsFailed,
    _claim,
    _pretrain_source,
    _release,
    execute,
    read_result,
)


def test_claims_are_exclusive_and_dead_claimants_lose_them(tmp_path):
    run = tmp_path / "run"
    assert _claim(run) and _claim(run)  # this process, twice
    _release(run)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / CLAIM).write_text(f"{socket.gethostname()} {sleeper.pid}")
        assert not _claim(run)  # a live process holds it
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _claim(run)  # its holder died: taken over
    assert (run / CLAIM).read_text() == f"{socket.gethostname()} {os.getpid()}"
    (run / CLAIM).write_text(f"elsewhere.example {os.getpid()}")
    assert not _claim(run)  # another host's pid cannot be checked from here: left alone


def test_pretraining_on_more_sources_lists_their_images(study_task, tmp_path):
    from tests.conftest import make_msd_folder

    other = make_msd_folder(tmp_path / "other", n=3, shape=(20, 28, 20))  # the same case names as study_task's
    for on_dataset, expected in [(True, 16 + 3), (False, 3)]:
        cfg = tiny_study(study_task, tmp_path / "s", pretrain_sources=[str(other)], pretrain_on_dataset=on_dataset)
        source, fold = _pretrain_source(plan_study(cfg)[0], cfg)
        assert fold is None  # the list already leaves the held-out fold out
        images = load_datalist(source).unlabeled
        assert len(images) == expected and len({it["case"] for it in images}) == expected
        assert sum(str(other) in it["image"] for it in images) == 3
    held_out = {it["image"] for it in split_fold(load_datalist(study_task), 0)[1]}
    assert not held_out & {it["image"] for it in load_datalist(source).unlabeled}
    cfg = tiny_study(study_task, tmp_path / "s")
    assert _pretrain_source(plan_study(cfg)[0], cfg) == (str(study_task), 0)  # no sources: the dataset, its fold


def test_a_failing_run_is_recorded_and_the_rest_of_the_study_finishes(study_task, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = tiny_study(study_task, tmp_path / "s", fractions=[0.5], seeds=[0], peer="none",
                     reuse_pretraining=[f"vit-tiny={bad}"])  # fmt: skip
    runs = plan_study(cfg)
    with pytest.raises(StudyRunsFailed, match=r"1 run\(s\) failed \(vit-tiny_pretrained_50pct_s0: .*bad.pt"):
        execute(runs, cfg)
    scratch, pretrained = sorted(runs, key=lambda r: r.init != "scratch")
    assert read_result(scratch.out_dir) is not None and read_result(pretrained.out_dir) is None
    assert "bad.pt" in (pretrained.out_dir / "failed.txt").read_text()
    assert not (pretrained.out_dir / CLAIM).exists()


def test_a_resume_may_add_reused_weights_for_an_added_encoder_only(study_task, tmp_path):
    from volmae.study.record import record_study
    from volmae.utils.io import config_yaml

    weights = {name: tmp_path / f"{name}.pt" for name in ("a", "b")}
    for path in weights.values():
        path.write_bytes(b"")
    out = tmp_path / "s"
    out.mkdir()
    first = tiny_study(study_task, out, reuse_pretraining=[f"vit-tiny={weights['a']}"])
    record_study(first)
    both = ["vit-tiny", "nnformer-tiny"]
    added = [f"vit-tiny={weights['a']}", f"nnformer-tiny={weights['b']}"]
    record_study(tiny_study(study_task, out, encoders=both, reuse_pretraining=added))
    record_study(first)  # back to the first encoder alone: its weights are the same
    record_study(tiny_study(study_task, out, encoders=["none"]))  # the CNN peer alone
    (out / "study.yaml").write_text(config_yaml(first))
    for reuse in ([f"vit-tiny={weights['b']}"], None):  # the earlier encoder's weights changed or dropped
        with pytest.raises(ConfigError, match=r"reuse_pretraining: vit-tiny '.*a\.pt' -> "):
            record_study(tiny_study(study_task, out, encoders=both, reuse_pretraining=reuse))


def test_the_record_names_every_commands_runs_and_keeps_their_design(study_task, tmp_path):
    """study.yaml holds the union of the commands' run choices, so an encoder that an earlier command ran keeps its
    pretraining (reused weights, method) when a later command brings it back after one without it."""
    import yaml

    from volmae.study.record import record_study

    out = tmp_path / "s"
    out.mkdir()
    read = lambda: yaml.safe_load((out / "study.yaml").read_text())  # noqa: E731
    record_study(tiny_study(study_task, out, peer="none", fractions=[0.25], seeds=[0]))
    record_study(tiny_study(study_task, out, encoders=["nnformer-tiny"], peer="dynunet", fractions=[1.0], seeds=[2]))
    record_study(tiny_study(study_task, out, encoders=["none"], fractions=[0.5], seeds=[1], report_only=True))
    expected = {"encoders": ["vit-tiny", "nnformer-tiny"], "peer": "dynunet", "fractions": [0.25, 1.0],
                "seeds": [0, 2], "methods": None, "reuse_pretraining": None}  # fmt: skip
    assert {k: read()[k] for k in expected} == expected  # the report-only command added nothing
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    # vit-tiny's runs were pretrained in the study: another command may not give it other weights, nor another
    # method, even though the last command did not run it
    with pytest.raises(ConfigError, match=r"reuse_pretraining: vit-tiny None -> '.*w\.pt'"):
        record_study(tiny_study(study_task, out, reuse_pretraining=[f"vit-tiny={weights}"]))
    with pytest.raises(ConfigError, match="methods: vit-tiny 'masked-unetr' -> 'mae'"):
        record_study(tiny_study(study_task, out, methods=["mae"]))
    with pytest.raises(ConfigError, match=r"steps: 2 -> 3"):
        record_study(tiny_study(study_task, out, encoders=["none"], steps=3))
    assert {k: read()[k] for k in expected} == expected  # a refused command records nothing
    # the same method spelled out, for one encoder: the record lists both encoders' methods
    record_study(tiny_study(study_task, out, encoders=["nnformer-tiny"], methods=["auto"], seeds=[1]))
    assert read()["methods"] == ["masked-unetr", "auto"] and read()["seeds"] == [0, 1, 2]
    record_study(tiny_study(study_task, out, encoders=["nnformer-tiny"]))  # and the default agrees with it


def test_the_record_lists_every_nnunet_budget_the_folder_ran(study_task, tmp_path):
    """Each nnU-Net budget plans its own runs, so the record joins them like the fractions; a command without the
    nnU-Net peer adds none (its default budgets ran nothing)."""
    import yaml

    from volmae.study.record import record_study

    out = tmp_path / "s"
    out.mkdir()
    read = lambda: yaml.safe_load((out / "study.yaml").read_text())["nnunet_budgets"]  # noqa: E731
    record_study(tiny_study(study_task, out, peer="none", nnunet_budgets=["1x", "4x"]))
    record_study(tiny_study(study_task, out, peer="nnunet", nnunet_budgets=["1x"]))
    assert read() == ["1x"]
    record_study(tiny_study(study_task, out, peer="nnunet", nnunet_budgets=["4x"], fractions=[0.5]))
    record_study(tiny_study(study_task, out, peer="none", nnunet_budgets=["20"]))
    assert read() == ["1x", "4x"]


def test_only_studies_of_the_same_design_pool(study_task, tmp_path):
    from volmae.study.record import check_pool
    from volmae.utils.io import config_yaml

    folds = {f: tmp_path / f"fold{f}" for f in (0, 1)}
    for f, folder in folds.items():
        folder.mkdir()
        (folder / "study.yaml").write_text(config_yaml(tiny_study(study_task, folder, fold=f, seeds=[f])))
    check_pool(tiny_study(study_task, folds[0], pool_studies=[str(folds[1])]))  # another fold, other seeds: fine
    (folds[1] / "study.yaml").write_text(config_yaml(tiny_study(study_task, folds[1], fold=1, steps=3)))
    with pytest.raises(ConfigError, match=r"fold1 is a study of another design \(steps: 3 -> 2\)"):
        check_pool(tiny_study(study_task, folds[0], pool_studies=[str(folds[1])]))
    with pytest.raises(ConfigError, match="not a study folder"):
        check_pool(tiny_study(study_task, folds[0], pool_studies=[str(tmp_path)]))


def test_a_study_spacing_reaches_every_run_and_its_evaluation(study_task, tmp_path):
    """``pixdim`` of the study is the spacing of its pretraining, every fine-tune, and so of the evaluation (the
    model carries it)."""
    from volmae.artifact import ModelArtifact

    cfg = tiny_study(study_task, tmp_path / "s", fractions=[1.0], seeds=[0], peer="none", curve_points=0,
                     pixdim=(2.0, 2.0, 1.5))  # fmt: skip
    runs = plan_study(cfg)
    execute(runs, cfg)
    pretrain_run, *finetunes = runs
    assert ModelArtifact.load(pretrain_run.model_path, role="pretraining").task.preprocessing.pixdim == (2.0, 2.0, 1.5)
    for run in finetunes:
        model = ModelArtifact.load(run.out_dir / "model.pt", role="segmentation")
        assert model.task.preprocessing.pixdim == (2.0, 2.0, 1.5)
        assert read_result(run.out_dir)["eval_cases"] == 4


def test_cpu_bf16_reaches_every_stage_and_a_resume_cannot_change_it(study_task, tmp_path, monkeypatch):
    """``cpu_bf16`` runs the pretraining, every fine-tune and every evaluation under CPU bf16 autocast; a resume
    with fp32 would mix precisions in one report, so it is refused."""
    import yaml

    from volmae.study import runner

    seen = []
    real_evaluate = runner.evaluate
    monkeypatch.setattr(runner, "evaluate", lambda cfg: seen.append(cfg.cpu_bf16) or real_evaluate(cfg))
    cfg = tiny_study(study_task, tmp_path / "s", fractions=[1.0], seeds=[0], peer="dynunet", curve_points=0,
                     cpu_bf16=True)  # fmt: skip
    runs = runner.run_study(cfg)
    assert len(runs) == 4 and all(read_result(r.out_dir) for r in runs)
    for run in runs:  # each stage records the settings it ran with
        assert yaml.safe_load((run.out_dir / "config.yaml").read_text())["cpu_bf16"] is True, run.name
    assert seen == [True, True, True]  # scratch, pretrained, peer
    with pytest.raises(ConfigError, match=r"cpu_bf16: True -> False"):
        runner.run_study(tiny_study(study_task, tmp_path / "s", fractions=[1.0], seeds=[0], peer="dynunet",
                                    curve_points=0))  # fmt: skip


def test_a_study_recorded_before_a_setting_existed_resumes_at_its_default(study_task, tmp_path):
    """A folder whose study.yaml predates a setting (here the nnU-Net peer's) still resumes: absent = default."""
    import yaml

    from volmae.study.record import RECORD, record_study

    cfg = tiny_study(study_task, tmp_path / "s")
    Path(cfg.out_dir).mkdir(parents=True)
    record_study(cfg)
    path = Path(cfg.out_dir) / RECORD
    old = {k: v for k, v in yaml.safe_load(path.read_text()).items() if not k.startswith("nnunet")}
    path.write_text(yaml.safe_dump(old))
    record_study(cfg)  # no error
    with pytest.raises(ConfigError, match="nnunet_mirroring"):
        record_study(tiny_study(study_task, tmp_path / "s", nnunet_mirroring=False))


def test_pretrain_only_pretrains_and_the_same_command_then_fine_tunes_on_it(study_task, tmp_path, capsys):
    """--pretrain-only (e.g. one process with every thread) runs the pretraining alone; the same command without it
    then runs the fine-tunes on that pretraining instead of redoing it."""
    from volmae.cli.study import main

    out = tmp_path / "s"
    flags = ["--dataset-dir", str(study_task), "--out-dir", str(out), "--encoders", "vit-tiny", "--peer", "none",
             "--fractions", "1.0", "--seeds", "0", "--roi-size", "16", "16", "16", "--steps", "2", "--batch-size", "2",
             "--num-samples", "1", "--pretrain-epochs", "1", "--curve-points", "0", "--device", "cpu"]  # fmt: skip
    model = out / "pretrain" / "vit-tiny" / "model.pt"
    assert main([*flags, "--pretrain-only"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"pretrained vit-tiny: {model}")
    assert model.is_file() and not list(out.glob("runs/*/result.json"))
    stamp = model.stat().st_mtime_ns
    assert main(flags) == 0
    assert "2 of 2 fine-tuning runs of this command finished" in capsys.readouterr().out
    assert model.stat().st_mtime_ns == stamp  # the fine-tunes used it, nothing pretrained again
