"""nnU-Net v2 as the study's peer (volmae.study.nnunet): its raw task, finding the Python that has it, the budget
matched to the volmae runs, scoring its predictions with volmae's evaluation; and one real run where installed."""

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import make_msd_folder
from tests.study.conftest import tiny_study
from volmae.data.datalist import load_datalist, split_fold
from volmae.errors import ConfigError, DataError
from volmae.evaluation.evaluate import EvaluateConfig, evaluate_predictions
from volmae.study import nnunet as peer
from volmae.study import plan_study, run_study
from volmae.study.nnunet_job import fit_epochs
from volmae.study.plan import FinetuneRun, NnunetRun
from volmae.study.runner import read_result


def test_the_plan_puts_nnunet_runs_last_one_per_budget(study_task, tmp_path):
    runs = plan_study(tiny_study(study_task, tmp_path / "s", peer="nnunet", nnunet_budgets=["1x", "20"]))
    peers = [r for r in runs if isinstance(r, NnunetRun)]
    assert runs[-len(peers) :] == peers and len(peers) == 2 * 2 * 2  # fractions x seeds x budgets
    assert {r.preset for r in peers} == {"nnunet-1x", "nnunet-20min"}
    twins = {(r.fraction, r.seed, r.labeled_cases) for r in runs if isinstance(r, FinetuneRun)}
    assert {(r.fraction, r.seed, r.labeled_cases) for r in peers} == twins  # the same labeled cases
    assert not any(isinstance(r, FinetuneRun) and r.preset == "dynunet" for r in runs)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(nnunet_budgets=["fast"]), "nnunet_budgets: 'fast'; expected e.g. 1x"),
        (dict(nnunet_budgets=["0x"]), "nnunet_budgets: '0x'"),
        (dict(nnunet_budgets=[]), "give at least one"),
        (dict(peer_steps=10), "peer_steps sizes the DynUNet peer"),
    ],
)
def test_bad_nnunet_settings_are_named(study_task, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        plan_study(tiny_study(study_task, tmp_path / "s", peer="nnunet", **kw))


def test_without_nnunet_one_line_says_how_to_install(monkeypatch):
    monkeypatch.delenv("VOLMAE_NNUNET_PYTHON", raising=False)
    monkeypatch.setattr(peer, "_has_nnunet", lambda python: False)
    with pytest.raises(ConfigError, match=r"nnU-Net v2 is not installed: .*pip install nnunetv2==2\.8\.1") as e:
        peer.find_nnunet_python()
    assert "\n" not in str(e.value) and "volmae[peers]" in str(e.value)
    with pytest.raises(ConfigError, match="nnunet_python=/no/python: cannot import nnunetv2"):
        peer.find_nnunet_python("/no/python")


def test_the_raw_task_has_nnunets_layout(tmp_path):
    task = make_msd_folder(tmp_path / "task", n=6)
    datalist = load_datalist(task)
    train, test = split_fold(datalist, 0)
    root = peer.write_raw_task(datalist, train, test, tmp_path / "raw", 7)
    meta = json.loads((root / "dataset.json").read_text())
    assert root.name == "Dataset007_volmae" and meta["numTraining"] == len(train) and meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["background"] == 0 and sorted(meta["labels"].values()) == sorted(datalist.labels)
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == sorted(f"{it['case']}.nii.gz" for it in train)
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == sorted(f"{it['case']}_0000.nii.gz" for it in test)
    with pytest.raises(ConfigError, match="nnU-Net takes 1..999"):
        peer.write_raw_task(datalist, train, test, tmp_path / "raw", 1000)


def test_multichannel_images_are_split_per_channel(tmp_path):
    img = np.random.default_rng(0).normal(size=(6, 7, 8, 2)).astype(np.float32)
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(img, np.eye(4)), path)
    files = peer._channel_files(str(path), "case", tmp_path / "out", 2)
    assert [f.name for f in files] == ["case_0000.nii.gz", "case_0001.nii.gz"]
    np.testing.assert_allclose(nib.load(files[1]).get_fdata(), img[..., 1], atol=1e-6)


def test_one_file_per_channel_in_other_formats_is_written_per_channel(tmp_path):
    rng = np.random.default_rng(0)
    flair, t1c = (rng.normal(size=(6, 7, 8)).astype(np.float32) for _ in range(2))
    sources = [tmp_path / "flair.nii", tmp_path / "t1c.nii.gz"]
    for arr, path in zip((flair, t1c), sources):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    files = peer._channel_files([str(s) for s in sources], "case", tmp_path / "out", 2)
    assert not files[0].is_symlink() and files[1].is_symlink()  # .nii read and written, .nii.gz linked
    np.testing.assert_allclose(nib.load(files[0]).get_fdata(), flair, atol=1e-6)
    np.testing.assert_allclose(nib.load(files[1]).get_fdata(), t1c, atol=1e-6)
    with pytest.raises(ConfigError, match="3 image files, the task declares 2 channels"):
        peer._channel_files([str(sources[0])] * 3, "case", tmp_path / "out", 2)
    both = tmp_path / "both.nii"
    nib.save(nib.Nifti1Image(np.stack([flair, t1c], -1), np.eye(4)), both)
    with pytest.raises(ConfigError, match="one channel expected per file"):
        peer._channel_files([str(both), str(sources[1])], "case", tmp_path / "out", 2)


@pytest.mark.realdata
def test_a_dicom_series_becomes_a_nifti_channel(dicom_crops, tmp_path):
    from volmae.data import load_volume

    series = dicom_crops / "Study1" / "13_HCropVolume"
    (out,) = peer._channel_files(str(series), "case", tmp_path / "out", 1)
    data, affine = load_volume(series)
    written = nib.load(out)
    np.testing.assert_allclose(written.get_fdata(), data, atol=1e-3)
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)


def test_predictions_made_elsewhere_are_scored_like_a_model(tmp_path):
    task = make_msd_folder(tmp_path / "task", n=6)
    _, held = split_fold(load_datalist(task), 0)
    preds = tmp_path / "preds"
    preds.mkdir()
    for it in held:  # perfect predictions: the labels themselves
        (preds / f"{it['case']}.nii.gz").symlink_to(Path(it["label"]).resolve())
    cfg = EvaluateConfig(model=None, dataset_dir=str(task), out_dir=str(tmp_path / "eval"), quiet=True, num_overlays=0)
    report = evaluate_predictions(cfg, preds)
    assert report.summary["mean"]["dice_mean"] == pytest.approx(1.0) and report.summary["mean"]["n"] == len(held)
    (preds / f"{held[0]['case']}.nii.gz").unlink()
    with pytest.raises(DataError, match="no prediction for 1 case"):
        evaluate_predictions(cfg, preds)


FAKE_JOB = """
import json, os, sys, glob
import nibabel as nib, numpy as np
job = json.load(open(sys.argv[1]))
os.makedirs(job["predictions"], exist_ok=True)
for f in glob.glob(os.path.join(job["images"], "*_0000.nii.gz")):
    img = nib.load(f)
    case = os.path.basename(f)[: -len("_0000.nii.gz")]
    out = os.path.join(job["predictions"], case + ".nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.int16), img.affine), out)
json.dump({"train_seconds": 1.0, "epochs": 1, "iterations": 3, "patch_size": [8, 8, 8], "batch_size": 2,
           "seconds_asked": job["seconds"], "env": os.environ["nnUNet_raw"]}, open(job["result"], "w"))
"""


def _simulate_budget(seconds: float, epoch_times: list[float]) -> tuple[int, float]:
    """What the budget trainer does: refit after each epoch, stop when the epochs done reach the fit."""
    elapsed, done, fitted = 0.0, 0, None
    while fitted is None or done < fitted:
        elapsed, done = elapsed + epoch_times[min(done, len(epoch_times) - 1)], done + 1
        fitted = fit_epochs(seconds, elapsed, done)
    return done, elapsed


@pytest.mark.parametrize(
    "seconds, epoch_times",
    [
        (1079, [32.8, 31.2, 28.9, 26.6, 27.0]),  # a measured 25 % run: the first epoch the slowest
        (988, [120.9, 110.6, 109.5]),  # a measured 100 % run: 8 epochs fitted once, 918 s used
        (300, [10.0]),
    ],
)
def test_the_nnunet_schedule_fills_its_budget_within_half_an_epoch(seconds, epoch_times):
    done, elapsed = _simulate_budget(seconds, epoch_times)
    assert abs(elapsed - seconds) <= epoch_times[-1] / 2 + 1e-6, (done, elapsed)


def test_an_epoch_longer_than_the_budget_still_trains_one():
    assert _simulate_budget(5, [60.0]) == (1, 60.0)
    assert fit_epochs(100, 150, 3) == 3  # over budget: stop at the epochs done
    with pytest.raises(ValueError, match="fit after at least one timed epoch"):
        fit_epochs(100, 0, 0)


def test_equal_minutes_come_from_the_volmae_runs_of_the_same_fraction_and_seed(study_task, tmp_path, monkeypatch):
    """A stand-in for nnU-Net's job (same interface): the study hands it the budget of the volmae runs it matches,
    then scores its label maps with volmae's evaluation."""
    job = tmp_path / "fake_job.py"
    job.write_text(FAKE_JOB)
    monkeypatch.setattr(peer, "JOB", job)
    monkeypatch.setattr(peer, "_has_nnunet", lambda python: True)
    cfg = tiny_study(study_task, tmp_path / "s", encoders=["resenc-tiny"], fractions=[1.0], seeds=[0], peer="nnunet",
                     nnunet_budgets=["2x"], nnunet_python=sys.executable, curve_points=0)  # fmt: skip
    runs = run_study(cfg)
    volmae_runs = [read_result(r.out_dir) for r in runs if isinstance(r, FinetuneRun)]
    (nn,) = [read_result(r.out_dir) for r in runs if isinstance(r, NnunetRun)]
    mean_minutes = sum(r["train_seconds"] for r in volmae_runs) / len(volmae_runs) / 60
    assert nn["budget_minutes"] == pytest.approx(2 * mean_minutes)
    assert nn["nnunet"]["seconds_asked"] == pytest.approx(2 * mean_minutes * 60)
    assert nn["family"] == "nnunet" and nn["preset"] == "nnunet-2x" and nn["dice"] == 0.0
    assert nn["eval_cases"] == len(split_fold(load_datalist(study_task), 0)[1])


@pytest.mark.slow
@pytest.mark.realdata
def test_nnunet_trains_and_predicts_real_mri(msd_hippocampus, tmp_path):
    """The real nnU-Net v2 (where $VOLMAE_NNUNET_PYTHON names a Python that has it) on 8 hippocampus cases for a
    one-minute budget: it plans, trains on the budget, predicts, and volmae scores the predictions."""
    python = os.environ.get("VOLMAE_NNUNET_PYTHON")
    if not python:
        pytest.skip("set VOLMAE_NNUNET_PYTHON to a Python with nnunetv2 (its own environment) to run nnU-Net")
    datalist = load_datalist(msd_hippocampus)
    train, held = split_fold(datalist, 0)
    job = peer.run_nnunet(datalist, train[:8], held[:3], tmp_path / "nn", 60, python, mirroring=False)
    assert job["epochs"] >= 1 and len(job["patch_size"]) == 3
    epoch = job["train_seconds"] / job["epochs"]  # an upper bound: train_seconds holds the loaders' start and end
    assert 60 - epoch / 2 - 1 <= job["train_seconds"] <= 60 + epoch + 60, job  # the budget filled, not 8 % short
    preds = sorted((tmp_path / "nn" / "predictions").glob("*.nii.gz"))
    assert [p.name for p in preds] == sorted(f"{it['case']}.nii.gz" for it in held[:3])
    cfg = EvaluateConfig(model=None, dataset_dir=str(msd_hippocampus), out_dir=str(tmp_path / "eval"), quiet=True,
                         cases=[it["case"] for it in held[:3]], num_overlays=0)  # fmt: skip
    assert evaluate_predictions(cfg, tmp_path / "nn" / "predictions").summary["mean"]["n"] == 3
