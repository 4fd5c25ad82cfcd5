"""The whole pipeline on real hippocampus MRI at tiny size: MAE pretraining -> UNETR fine-tuning -> evaluation."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volmae.data.datalist import load_msd_datalist
from volmae.engine.finetune import FinetuneConfig, finetune
from volmae.engine.pretrain import PretrainConfig, pretrain
from volmae.evaluation.evaluate import EvaluateConfig, evaluate
from volmae.inference.infer import InferConfig, infer


def small_task(src, dst, n_train=6, n_val=2):
    """An MSD folder with a few real cases (absolute paths, no copies) and a one-fold split."""
    dl = load_msd_datalist(src)
    items = dl.items[: n_train + n_val]
    dst.mkdir()
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = [{"image": it["image"], "label": it["label"]} for it in items]
    (dst / "dataset.json").write_text(json.dumps(meta))
    (dst / "splits.json").write_text(json.dumps({"folds": [[it["case"] for it in items[n_train:]]]}))
    return dst


def input_digests(task: Path) -> dict[str, str]:
    """sha256 of every file a stage reads: the task's dataset.json / splits.json and each image and label."""
    files = [task / "dataset.json", task / "splits.json"]
    for it in json.loads((task / "dataset.json").read_text())["training"]:
        files += [Path(it["image"]), Path(it["label"])]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.realdata
def test_pretrain_finetune_evaluate_on_real_mri(msd_hippocampus, tmp_path):
    task = small_task(msd_hippocampus, tmp_path / "task")
    before = input_digests(task)
    common = dict(dataset_dir=str(task), roi_size=(24, 32, 24), device="cpu", quiet=True)
    pre = pretrain(PretrainConfig(out_dir=str(tmp_path / "pre"), epochs=2, batch_size=3, **common))
    assert input_digests(task) == before, "pretraining modified an input"
    assert pre.model_path.is_file() and len(pre.history) == 2
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pre.pictures)
    # pretraining longer on top of a finished run starts where that run ended, not at a fresh network's loss
    more = pretrain(
        PretrainConfig(out_dir=str(tmp_path / "more"), epochs=1, batch_size=3, init_from=str(pre.model_path), **common)
    )
    assert more.history[0]["loss"] < pre.history[0]["loss"]
    ft = finetune(
        FinetuneConfig(
            out_dir=str(tmp_path / "ft"),
            epochs=2,
            pretrained=str(pre.model_path),
            feature_size=8,
            val_every=1,
            **common,
        )
    )
    assert input_digests(task) == before, "fine-tuning modified an input"
    assert "0 missing" in (tmp_path / "ft" / "pretrained_load_report.txt").read_text()
    assert 0.0 <= ft.best_dice <= 1.0 and ft.best_epoch in (1, 2)
    last = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)["weights"]
    final = torch.load(ft.model_path, weights_only=True)["weights"]  # the last epoch's, not a selected one
    assert all(torch.equal(last[k], final[k]) for k in last)
    report = evaluate(
        EvaluateConfig(
            str(ft.model_path), str(task), str(tmp_path / "ev"), device="cpu", save_predictions=True, quiet=True
        )
    )
    assert input_digests(task) == before, "evaluation modified an input"
    assert [c.case for c in report.cases] == json.loads((task / "splits.json").read_text())["folds"][0]
    assert set(report.names) == {"Anterior", "Posterior"}
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert 0.0 <= summary["mean"]["dice_mean"] <= 1.0
    for case in report.cases:
        assert (tmp_path / "ev" / "predictions" / f"{case.case}.nii.gz").is_file()
        assert (tmp_path / "ev" / "pictures" / f"overlay_{case.case}.png").is_file()
    images = [it["image"] for it in json.loads((task / "dataset.json").read_text())["training"]]
    done = infer(InferConfig(images, str(ft.model_path), output=str(tmp_path / "seg"), quiet=True, device="cpu"))
    assert all(c.status == "ok" for c in done) and len(done) == len(images)
    assert input_digests(task) == before, "volmae-infer modified an input"
    # the opt-in bf16 CPU path, on the same real scans: same grids, nearly the same labels (a model this briefly
    # trained has near-tied logits, so this bounds the path's damage; Dice parity of a trained model is measured in
    # docs/performance.md)
    half = infer(
        InferConfig(images, str(ft.model_path), output=str(tmp_path / "seg16"), quiet=True, device="cpu", cpu_bf16=True)
    )
    assert all(c.status == "ok" for c in half) and len(half) == len(images)
    for a, b in zip(done, half, strict=True):
        la, lb = nib.load(a.label_map), nib.load(b.label_map)
        assert la.shape == lb.shape and np.allclose(la.affine, lb.affine)
        assert (np.asarray(la.dataobj) == np.asarray(lb.dataobj)).mean() > 0.95


@pytest.mark.realdata
def test_nnformer_masked_volume_pretrain_finetune_evaluate_infer_on_real_mri(msd_hippocampus, tmp_path):
    """The same four stages with the nnFormer family, chosen by the preset alone."""
    from volmae.errors import CheckpointError
    from volmae.inference.infer import InferConfig, infer

    task = small_task(msd_hippocampus, tmp_path / "task")
    common = dict(dataset_dir=str(task), roi_size=(16, 32, 16), device="cpu", quiet=True, preset="nnformer-tiny")
    pre = pretrain(PretrainConfig(out_dir=str(tmp_path / "pre"), epochs=2, batch_size=3, **common))
    ckpt = torch.load(pre.model_path, weights_only=True)
    assert ckpt["kind"] == "masked-volume" and ckpt["network"]["masked_volume"]["mask_ratio"] == 0.6
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pre.pictures)
    ft = finetune(
        FinetuneConfig(out_dir=str(tmp_path / "ft"), epochs=2, pretrained=str(pre.model_path), val_every=1, **common)
    )
    report_text = (tmp_path / "ft" / "pretrained_load_report.txt").read_text()
    assert "0 missing" in report_text and "0 shape mismatches" in report_text
    assert torch.load(ft.model_path, weights_only=True)["kind"] == "nnformer"
    report = evaluate(EvaluateConfig(str(ft.model_path), str(task), str(tmp_path / "ev"), device="cpu", quiet=True))
    assert set(report.names) == {"Anterior", "Posterior"}
    scan = msd_hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    out = infer(InferConfig([str(scan)], model=str(ft.model_path), output=str(tmp_path / "seg.nii.gz"), device="cpu"))
    assert len(out) == 1 and out[0].label_map.is_file()

    # a ViT preset cannot take the nnFormer pretraining, and says what to do instead
    with pytest.raises(CheckpointError, match="pick a nnformer preset"):
        finetune(
            FinetuneConfig(
                out_dir=str(tmp_path / "vit"),
                epochs=1,
                pretrained=str(pre.model_path),
                **{**common, "preset": "vit-tiny"},
            )
        )


@pytest.mark.realdata
def test_brats_at_a_coarser_spacing_train_evaluate_infer(brats2013, tmp_path):
    """Real BraTS 2013 (FLAIR + T1c) fine-tuned at a ``pixdim`` other than the preset's: the spacing is stored with
    the model, evaluation and ``volmae-infer`` resample to it and answer on each case's own 240 x 240 x 155 grid, and
    the converter has zeroed the air that DeepMedic's z-scoring left at a constant (the ``mri`` preset normalises
    non-zero voxels only)."""
    import os

    from volmae.artifact import ModelArtifact
    from volmae.data.convert import convert_brats
    from volmae.errors import DataError

    src = tmp_path / "src"
    src.mkdir()
    cases = sorted((brats2013 / "train").iterdir())  # two cases: one trains, one is held out
    for c in cases:
        os.symlink(c, src / c.name)
    task = tmp_path / "task"
    convert_brats(src, task)
    (task / "splits.json").write_text(json.dumps({"folds": [[cases[1].name]]}))
    img = np.asarray(nib.load(task / "imagesTr" / f"{cases[0].name}.nii.gz").dataobj)
    brain = np.asarray(nib.load(cases[0] / "brainmask.nii.gz").dataobj) > 0
    assert (img[~brain] == 0).all() and (img[brain] != 0).mean() > 0.99
    common = dict(dataset_dir=str(task), preprocessing="mri", roi_size=(32, 32, 32), device="cpu", quiet=True)
    ft = finetune(
        FinetuneConfig(
            out_dir=str(tmp_path / "ft"),
            pixdim=(3.0, 3.0, 3.0),
            steps=2,
            batch_size=1,
            feature_size=8,
            val_every=0,
            **common,
        )
    )
    assert ModelArtifact.load(ft.model_path).task.preprocessing.pixdim == (3.0, 3.0, 3.0)
    report = evaluate(EvaluateConfig(str(ft.model_path), str(task), str(tmp_path / "ev"), device="cpu", quiet=True))
    assert [c.case for c in report.cases] == [cases[1].name] and set(report.names) == {"TC", "WT", "ET"}
    with pytest.raises(DataError, match="channel"):  # FLAIR alone where the model takes FLAIR + T1c
        infer(InferConfig([str(cases[1] / "Flair_subtrMeanDivStd.nii.gz")], str(ft.model_path), quiet=True,
                          output=str(tmp_path / "flair"), device="cpu"))  # fmt: skip
    scan = str(task / "imagesTr" / f"{cases[1].name}.nii.gz")
    done = infer(InferConfig([scan], str(ft.model_path), output=str(tmp_path / "seg"), quiet=True, device="cpu"))
    seg = nib.load(done[0].label_map)
    assert done[0].status == "ok" and seg.shape == (240, 240, 155)
    np.testing.assert_allclose(seg.affine, nib.load(scan).affine, atol=1e-4)

    # the same data trained as BraTS is scored: one sigmoid output per nested region (TC / WT / ET)
    regions = finetune(
        FinetuneConfig(
            out_dir=str(tmp_path / "regions"),
            pixdim=(3.0, 3.0, 3.0),
            steps=2,
            batch_size=1,
            feature_size=8,
            val_every=0,
            regions=True,
            **common,
        )  # fmt: skip
    )
    model = ModelArtifact.load(regions.model_path)
    assert model.task.output == "regions" and list(model.task.regions) == ["TC", "WT", "ET"]
    assert model.network.out_channels == 3 and model.task.labels == {
        0: "background",
        1: "edema",
        2: "non-enhancing tumour",
        3: "enhancing tumour",
    }
    report = evaluate(EvaluateConfig(str(regions.model_path), str(task), str(tmp_path / "ev2"), device="cpu",
                                     quiet=True))  # fmt: skip
    assert set(report.names) == {"TC", "WT", "ET"}
    done = infer(InferConfig([scan], str(regions.model_path), output=str(tmp_path / "seg2"), quiet=True, device="cpu"))
    labels = np.asarray(nib.load(done[0].label_map).dataobj)
    assert labels.shape == (240, 240, 155) and set(np.unique(labels)) <= {0, 1, 2, 3}  # one label map again
