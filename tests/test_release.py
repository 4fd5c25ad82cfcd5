"""``volmae-release``: a tiny release on synthetic data (cross-validation on training folds, packing, model card), a
release into a copied bundle that ``--bundle`` then reads, and its ill arguments."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import replace

import pytest
import torch

from tests.bundle.conftest import copy_bundle
from volmae.artifact.bundles import from_bundle
from volmae.artifact.model import ModelArtifact
from volmae.cli.common import add_config_args, config_from_args
from volmae.cli.release import main as release_main
from volmae.data.datalist import dataset_folds, load_msd_datalist
from volmae.errors import ConfigError, DataError
from volmae.release import ReleaseConfig, release

TINY = dict(steps=2, pretrain_epochs=1, device="cpu", quiet=True)


def test_release_trains_cross_validates_on_training_folds_and_packs(synthetic_task, tmp_path):
    out = tmp_path / "rel"
    cfg = ReleaseConfig(dataset_dir=str(synthetic_task), out_dir=str(out), recipe="smoke", cv_folds=2, **TINY)
    s = release(cfg)
    folds = dataset_folds(load_msd_datalist(synthetic_task))
    held_out = set(folds[0])
    assert s["held_out"]["cases"] == len(held_out) and s["data"]["train_cases"] == 6 - len(held_out)
    cv = s["cross_validation"]
    assert [f["fold"] for f in cv["folds"]] == [1, 2]  # the training folds, never fold 0
    for f in cv["folds"]:  # each trained without the fold it is scored on
        assert f["train_cases"] == 6 - len(held_out) - len(folds[f["fold"]]) and f["cases"] == len(folds[f["fold"]])
    assert cv["cases"] == len(folds[1]) + len(folds[2]) and set(cv["dice"]) == {"a", "b"}
    assert s["packed"]["dtype"] in ("bf16", "fp32") and len(s["packed"]["sha256"]) == 64
    art = ModelArtifact.load(out / "model.pt", role="segmentation")
    dtypes = {v.dtype for v in art.weights.values() if v.is_floating_point()}
    assert dtypes == {torch.bfloat16 if s["packed"]["dtype"] == "bf16" else torch.float32}
    assert json.loads((out / "release.json").read_text()) == json.loads(json.dumps(s))
    card = (out / "model_card.md").read_text()
    assert f"{s['held_out']['mean_dice']:.4f}" in card and "training folds" in card and s["packed"]["sha256"] in card
    assert "Wald et al." in card  # the S3D citation comes with the pretrained ResEnc U-Net
    # the card's command makes the same release: it parses back into these settings
    assert s["command"] == "volmae-release --bundle hippocampus --recipe smoke --steps 2 --pretrain-epochs 1 " + (
        "--cv-folds 2")  # fmt: skip
    assert f"(`{s['command']}`)" in card
    parser = argparse.ArgumentParser()
    add_config_args(parser, ReleaseConfig, {})
    back = config_from_args(ReleaseConfig, parser.parse_args(s["command"].split()[1:]))
    assert replace(back, dataset_dir=cfg.dataset_dir, out_dir=cfg.out_dir, device=cfg.device, quiet=cfg.quiet) == cfg


def test_a_stopped_release_resumes_reusing_its_finished_runs(synthetic_task, tmp_path):
    out = tmp_path / "rel"
    cfg = ReleaseConfig(dataset_dir=str(synthetic_task), out_dir=str(out), recipe="smoke", cv_folds=2, **TINY)
    first = release(cfg)
    kept = (out / "finetune" / "checkpoint.pt").read_bytes()
    shutil.rmtree(out / "cv" / "fold2")  # stopped before its last cross-validation fold
    with pytest.raises(ConfigError, match="already holds a run"):
        release(cfg)
    again = release(replace(cfg, resume=True))
    assert (out / "finetune" / "checkpoint.pt").read_bytes() == kept  # the finished fine-tune was not redone
    assert (out / "cv" / "fold2" / "model.pt").is_file()  # the missing fold was trained
    assert again["held_out"] == first["held_out"] and again["cross_validation"]["folds"][0] == first[
        "cross_validation"]["folds"][0]  # fmt: skip
    assert again["cross_validation"]["cases"] == first["cross_validation"]["cases"]
    # training time comes from the runs' records: the reused fine-tune counts what it took, not the resume's 0 s
    assert again["compute"]["seconds"]["finetune"] == first["compute"]["seconds"]["finetune"] > 0
    assert again["compute"]["seconds"]["total"] == pytest.approx(sum(
        v for k, v in again["compute"]["seconds"].items() if k != "total"), abs=0.2)  # fmt: skip


def test_release_into_a_bundle_is_what_the_bundle_then_serves(synthetic_task, tmp_path, capsys):
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    out = tmp_path / "rel"
    argv = ["--dataset-dir", str(synthetic_task), "--out-dir", str(out), "--into", str(root), "--steps", "1",
            "--pretrain-epochs", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert release_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"volmae-infer scan.nii.gz --bundle {root}" in printed and "held-out mean Dice" in printed
    rel = json.loads((root / "models" / "release.json").read_text())
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert rel["packed"]["bytes"] == (root / "models" / "model.pt").stat().st_size
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {getattr(torch, {"bf16": "bfloat16",
            "fp32": "float32"}[rel["packed"]["dtype"]])}  # fmt: skip
    art = from_bundle(root)
    released = ModelArtifact.load(out / "model.pt", role="segmentation")
    assert art.network.to_dict() == released.network.to_dict()
    assert all(torch.equal(art.weights[k].float(), released.weights[k].float()) for k in released.weights)
    assert (root / "models" / "model_card.md").read_text().startswith("# volmae hippocampus model")
    # a finished release installs into another copy of the bundle without training: the same file
    other = copy_bundle("hippocampus", tmp_path / "other")
    assert release_main(["--install-from", str(out), "--into", str(other)]) == 0
    again = torch.load(other / "models" / "model.pt", weights_only=True)
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
    installed = json.loads((other / "models" / "release.json").read_text())
    assert installed["held_out"] == rel["held_out"] and installed["packed"]["dtype"] == rel["packed"]["dtype"]
    assert installed["packed"]["sha256"] == hashlib.sha256((other / "models" / "model.pt").read_bytes()).hexdigest()
    btcv = copy_bundle("btcv", tmp_path / "other")
    with pytest.raises(ConfigError, match="a release of bundle 'hippocampus', not of 'btcv'"):
        release(ReleaseConfig(install_from=str(out), into=str(btcv)))
    with pytest.raises(ConfigError, match="not a finished release .missing model.pt, release.json"):
        release(ReleaseConfig(install_from=str(tmp_path), into=str(other)))
    with pytest.raises(ConfigError, match="install_from: name the bundle folder to install into"):
        release(ReleaseConfig(install_from=str(out)))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(recipe="fast"), "recipe='fast': choose one of cnn, vit"),
        (dict(dtype="int8"), "dtype='int8': choose one of bf16, fp16, fp32"),
        (dict(cv_folds=-1), "cv_folds=-1: must be >= 0"),
        (dict(steps=0), "steps=0: must be >= 1"),
        (dict(pretrain_epochs=0), "pretrain_epochs=0: must be >= 1"),
        (dict(bundle="lungs"), "unknown bundle 'lungs'"),
        (dict(resume=True, overwrite=True), "resume and overwrite: choose one"),
    ],
)
def test_ill_arguments_are_named(synthetic_task, tmp_path, change, match):
    cfg = ReleaseConfig(dataset_dir=str(synthetic_task), out_dir=str(tmp_path), **change)
    with pytest.raises((ConfigError, KeyError), match=match):
        release(cfg)


def test_a_recipe_that_does_not_fit_the_bundle_and_missing_data_are_refused(synthetic_task, tmp_path, monkeypatch):
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    with pytest.raises(ConfigError, match="recipe 'vit' trains vit-tiny, but bundle hippocampus's network_def is"):
        release(ReleaseConfig(dataset_dir=str(synthetic_task), out_dir=str(tmp_path), recipe="vit", into=str(root)))
    with pytest.raises(ConfigError, match="recipe='smoke': choose one of"):  # a pipeline check is never released
        release(ReleaseConfig(dataset_dir=str(synthetic_task), out_dir=str(tmp_path), recipe="smoke", into=str(root)))
    monkeypatch.setenv("VOLMAE_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="no msd_hippocampus data found: pass --dataset-dir"):
        release(ReleaseConfig(out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="cv_folds=9: .* has 4 training folds"):
        release(ReleaseConfig(dataset_dir=str(synthetic_task), out_dir=str(tmp_path), recipe="smoke", cv_folds=9))
