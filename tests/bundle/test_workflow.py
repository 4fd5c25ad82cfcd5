"""``volmae.bundle`` adapters and whole bundle rounds on synthetic volumes (CI, no real data): train -> evaluate ->
inference through MONAI's ``ConfigWorkflow``, each the same run as volmae's own API and console scripts."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundle.conftest import copy_bundle, edit_bundle, items, run_workflow
from tests.conftest import make_msd_folder, save_nifti
from volmae.artifact import ModelArtifact
from volmae.artifact.bundles import bundle_network
from volmae.bundle import Trainer, fold_items, input_items, unlabeled_items
from volmae.cli.common import find_volmae_error
from volmae.data import load_msd_datalist, split_fold
from volmae.engine import FinetuneConfig, finetune, fold_cases
from volmae.errors import CheckpointError, ConfigError, DataError
from volmae.inference.infer import InferConfig, infer
from volmae.networks import build_network

SMALL = {"device": "cpu"}


def small_bundle(folder, name="hippocampus"):
    """A copy of a shipped bundle with a 16^3 window (the synthetic 20 x 28 x 20 volumes fit it), as a user would
    adapt one."""
    root = copy_bundle(name, folder)
    edit_bundle(root, ("train.json", "inference.json"), roi_size=[16, 16, 16])
    return root


def test_fold_items_are_the_cases_of_volmae_train(synthetic_task):
    datalist = load_msd_datalist(synthetic_task)
    train, val = fold_cases(datalist, 0, val_fraction=0.25)
    assert fold_items(synthetic_task, 0, "train", val_fraction=0.25) == [
        {"image": it["image"], "label": it["label"], "case": it["case"]} for it in train
    ]
    assert [it["case"] for it in fold_items(synthetic_task, 0, "val", val_fraction=0.25)] == [it["case"] for it in val]
    test = fold_items(synthetic_task, 0, "test")
    assert [it["case"] for it in test] == [it["case"] for it in split_fold(datalist, 0)[1]]
    assert not {it["case"] for it in test} & {it["case"] for it in train + val}  # the held-out fold: scoring only
    assert len(fold_items(synthetic_task, 0, "train", fraction=0.5, val_fraction=0)) == 2
    assert len(fold_items(synthetic_task, 0, "train", limit=2)) == 2
    assert fold_items("", 0) == []  # no dataset yet: nothing to read while a config is checked
    with pytest.raises(ConfigError, match="part='all'"):
        fold_items(synthetic_task, 0, "all")


def test_unlabeled_and_input_items(synthetic_task):
    assert len(unlabeled_items(synthetic_task, fold=None)) == 6
    assert len(unlabeled_items(synthetic_task, fold=0)) == len(split_fold(load_msd_datalist(synthetic_task), 0)[0])
    assert all(set(i) == {"image"} for i in unlabeled_items(synthetic_task))
    assert len(input_items(synthetic_task / "imagesTr")) == 6
    assert len(input_items(None, synthetic_task / "imagesTr")) == 6  # the default folder, when it exists
    assert input_items(None, synthetic_task / "imagesTs") == input_items(None) == []
    with pytest.raises(DataError, match="input not found"):
        input_items(synthetic_task / "nothing")


def test_trainer_refuses_what_the_engine_does_not_run(synthetic_task):
    from monai.handlers import StatsHandler
    from monai.inferers import SlidingWindowInferer

    cfg = FinetuneConfig(str(synthetic_task))
    with pytest.raises(ConfigError, match="calls the network directly"):
        Trainer(cfg, [], inferer=SlidingWindowInferer(16))
    with pytest.raises(ConfigError, match="StatsHandler is an ignite handler"):
        Trainer(cfg, [], train_handlers=[StatsHandler()])
    with pytest.raises(ConfigError, match="no training cases: pass --dataset_dir"):
        Trainer(cfg, []).run()


def _train(root, task, **override):
    return run_workflow(
        str(root / "train.json"), dataset_dir=str(task), **SMALL, **{"train#trainer#max_epochs": 2, **override}
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The hippocampus bundle trained for 2 epochs on a synthetic task (its own copy), validating every epoch."""
    tmp = tmp_path_factory.mktemp("bundle")
    task = make_msd_folder(tmp / "task", shape=(20, 28, 20))
    root = small_bundle(tmp / "bundles")
    _train(root, task, val_interval=1, val_fraction=0.25)
    return root, task


def test_training_is_volmae_train_and_ends_with_the_plain_weights_in_models(trained, tmp_path):
    """The bundle and volmae-train with the same seed and settings end with the same weights, and the bundle's
    models/model.pt is the selected model's plain state dict of network_def."""
    root, task = trained
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    build_network(bundle_network(root)).load_state_dict(state)  # strict: network_def's own keys
    run = ModelArtifact.load(root / "runs" / "train" / "model.pt")  # the engine's own model file, provenance too
    assert all(torch.equal(run.weights[k], v) for k, v in state.items())
    held_out = {it["case"] for it in split_fold(load_msd_datalist(task), 0)[1]}
    assert run.provenance.validation_cases and not held_out & set(run.provenance.validation_cases)
    assert "best validation Dice" in run.provenance.selection

    settings = dict(preset="resenc-tiny", preprocessing="hippocampus", roi_size=(16, 16, 16), epochs=2, batch_size=2,
                    num_samples=2, lr=5e-4, weight_decay=1e-4, warmup_epochs=1.0, grad_clip=1.0, seed=0, val_every=1,
                    val_fraction=0.25, select_best=True, device="cpu", quiet=True)  # fmt: skip
    ours = finetune(FinetuneConfig(str(task), str(tmp_path / "train"), **settings))
    weights = ModelArtifact.load(ours.model_path).weights
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state), "the bundle trained other weights"


@pytest.mark.parametrize("val_interval", [5, 0])
def test_any_training_run_leaves_a_usable_model(tmp_path, val_interval):
    """One epoch with the default validation interval (the last epoch always validates), or none at all: both end
    with models/model.pt, and volmae-infer --bundle segments with it at once."""
    task = make_msd_folder(tmp_path / "task", shape=(20, 28, 20))
    root = small_bundle(tmp_path / "bundles")
    _train(root, task, val_interval=val_interval, **{"train#trainer#max_epochs": 1})
    assert (root / "models" / "model.pt").is_file()
    done = infer(InferConfig([str(task / "imagesTr" / "case_000.nii.gz")], bundle=str(root),
                             output=str(tmp_path / "seg.nii.gz"), device="cpu", quiet=True))  # fmt: skip
    assert done[0].status == "ok"


def test_monai_label_style_training_continues_from_the_current_model(trained, tmp_path):
    """MONAI Label overrides the case lists and, when models/model.pt exists, puts a CheckpointLoader into
    train#handlers: the engine then starts from those weights."""
    root, task = trained
    data = items(task)
    loader = {"_target_": "CheckpointLoader", "load_path": str(root / "models" / "model.pt"),
              "load_dict": {"model": "$@network"}, "strict": False}  # fmt: skip
    run_workflow(
        str(root / "train.json"), dataset_dir="", **SMALL, output_dir=str(tmp_path / "run"),
        ckpt_dir=str(tmp_path / "models"),
        **{"train#dataset#data": data[:3], "validate#dataset#data": data[3:4], "train#handlers": [loader]},
        **{"train#trainer#max_epochs": 1},
    )  # fmt: skip
    prov = ModelArtifact.load(tmp_path / "run" / "model.pt").provenance
    assert prov.initialised_from == f"every weight of {root / 'models' / 'model.pt'}"
    assert len(prov.training_cases) == 3 and len(prov.validation_cases) == 1
    assert (tmp_path / "models" / "model.pt").is_file()


def test_evaluate_scores_the_held_out_fold(trained):
    root, task = trained
    run_workflow([str(root / "configs" / "train.json"), str(root / "configs" / "evaluate.json")],
                 dataset_dir=str(task), **SMALL)  # fmt: skip
    summary = json.loads((root / "runs" / "eval" / "summary.json").read_text())
    held_out = [it["case"] for it in split_fold(load_msd_datalist(task), 0)[1]]
    rows = (root / "runs" / "eval" / "metrics.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} >= set(held_out)
    assert summary["mean"]["n"] == len(held_out) and "anterior" in summary


def test_bundle_inference_and_volmae_infer_write_the_same_label_map(trained, tmp_path):
    root, task = trained
    src = task / "imagesTr" / "case_000.nii.gz"
    run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(src), **SMALL)
    bundle_out = nib.load(root / "predictions" / "case_000.nii.gz")
    ref = nib.load(src)
    assert bundle_out.shape == ref.shape and np.allclose(bundle_out.affine, ref.affine)
    done = infer(
        InferConfig([str(src)], bundle=str(root), output=str(tmp_path / "seg.nii.gz"), device="cpu", quiet=True)
    )
    cli_out = nib.load(done[0].label_map)
    assert np.array_equal(np.asarray(cli_out.dataobj), np.asarray(bundle_out.dataobj))


def test_the_inferer_settings_reach_volmae_infer(trained, tmp_path, monkeypatch):
    import volmae.bundle.workflow as workflow
    import volmae.utils.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)
    seen = []
    monkeypatch.setattr(workflow, "infer", lambda cfg, model: seen.append((cfg, model)) or [])
    root, task = trained
    overrides = {"inferer#sw_batch_size": 3, "inferer#overlap": 0.25, "cpu_bf16": True, "output_dir": str(tmp_path)}
    run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(task / "imagesTr"), **overrides)
    ((cfg, model),) = seen
    assert (cfg.cpu_bf16, cfg.sw_batch_size, cfg.overlap, cfg.mode, cfg.roi_size) == (True, 3, 0.25, "gaussian",
                                                                                      (16, 16, 16))  # fmt: skip
    assert len(cfg.inputs) == 6 and cfg.output == str(tmp_path) and model.source == str(root / "models" / "model.pt")


def test_wrong_channel_count_is_named(trained, tmp_path):
    root, _ = trained
    two = save_nifti(tmp_path / "two.nii.gz", np.random.default_rng(0).normal(size=(20, 28, 20, 2)).astype(np.float32))
    with pytest.raises(DataError, match="two.nii.gz: has 2 channel\\(s\\), the task expects 1"):
        infer(InferConfig([str(two)], bundle=str(root), output=str(tmp_path / "o"), device="cpu", quiet=True))
    with pytest.raises(RuntimeError) as err:
        run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(two), **SMALL)
    assert "has 2 channel(s), the task expects 1" in str(find_volmae_error(err.value))
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_missing_weights_and_inputs(synthetic_task, tmp_path):
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    with pytest.raises(CheckpointError, match="no trained weights in the bundle; train it first"):
        infer(InferConfig([str(synthetic_task / "imagesTr")], bundle=str(root), output=str(tmp_path / "o")))
    with pytest.raises(RuntimeError) as err:
        run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(synthetic_task / "imagesTr"))
    assert "no trained weights" in str(find_volmae_error(err.value))
    with pytest.raises(RuntimeError) as err:
        run_workflow(str(root / "configs" / "inference.json"), "infer", dataset_dir="")
    assert "no input scans: pass --input" in str(find_volmae_error(err.value))
    assert not (root / "predictions").exists()


def test_labels_reach_volmae_infer(trained):
    from volmae.inference.infer import model_classes

    root, _ = trained
    labels = json.loads((root / "configs" / "inference.json").read_text())["labels"]
    assert model_classes(bundle=str(root)) == {int(k): v for k, v in labels.items()} == {
        0: "background", 1: "anterior", 2: "posterior"
    }  # fmt: skip


def test_volmae_infer_bundle_errors_exit_2(synthetic_task, tmp_path, capsys, monkeypatch):
    from volmae.cli.infer import main

    scan = str(synthetic_task / "imagesTr" / "case_000.nii.gz")
    monkeypatch.chdir(tmp_path)
    assert main([scan, "--model", "m.pt", "--bundle", "btcv"]) == 2  # the bundle's network with that file
    assert "m.pt: model file not found" in capsys.readouterr().err
    assert main(["--list-classes", "--bundle", "no_such_bundle"]) == 2
    err = capsys.readouterr().err
    assert "bundle 'no_such_bundle' not found" in err and "brats, btcv, hippocampus" in err
    assert main([scan, "--bundle", str(copy_bundle("hippocampus", tmp_path / "b"))]) == 2
    assert "no trained weights in the bundle" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.nii.gz"))  # nothing written
    assert main([scan, "--bundle", str(synthetic_task)]) == 2
    assert "not a volmae MONAI bundle (missing configs/metadata.json" in capsys.readouterr().err


def test_list_classes_of_a_shipped_bundle(capsys):
    from volmae.cli.infer import main

    assert main(["--list-classes", "--bundle", "brats"]) == 0
    assert "3  enhancing tumour" in capsys.readouterr().out


def test_volmae_evaluate_scores_a_bundle_in_original_space(trained, tmp_path):
    from volmae.evaluation.evaluate import EvaluateConfig, evaluate

    root, task = trained
    report = evaluate(
        EvaluateConfig(None, str(task), bundle=str(root), out_dir=str(tmp_path / "ev"), cases=["case_004"], quiet=True)
    )
    assert [c.case for c in report.cases] == ["case_004"] and set(report.cases[0].dice) == {"anterior", "posterior"}
    assert (tmp_path / "ev" / "metrics.csv").is_file()


def test_a_volmae_train_model_goes_into_a_bundle(trained, tmp_path, capsys):
    """volmae-model to-bundle: a model trained with the bundle's network becomes its models/model.pt; another
    network is refused with what differs."""
    from volmae.cli.model import main

    root, task = trained
    target = small_bundle(tmp_path / "bundles")
    res = finetune(FinetuneConfig(str(task), str(tmp_path / "ft"), preset="resenc-tiny", roi_size=(16, 16, 16),
                                  epochs=1, num_samples=1, val_every=0, device="cpu", quiet=True))  # fmt: skip
    assert main(["to-bundle", str(res.model_path), str(target)]) == 0
    assert "the weights of" in capsys.readouterr().out
    state = torch.load(target / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in ModelArtifact.load(res.model_path).weights.items())
    assert main(["to-bundle", str(res.model_path), str(target)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    other = copy_bundle("hippocampus", tmp_path / "other")  # the shipped 40 x 56 x 40 window
    assert main(["to-bundle", str(res.model_path), str(other)]) == 2
    assert "network_def is a resenc of preset resenc-tiny at [40, 56, 40]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overlay, roi, pretraining, network, initialised, weight, report",
    [
        ("nnformer.json", [16, 32, 16], "masked-volume", "nnformer", "pretrained encoder",
         "encoder.stages.0.blocks.0.attn.qkv.weight", "encoder weights"),
        ("resenc.json", [16, 16, 16], "s3d", "resenc", "pretrained encoder and decoder",
         "ups.0.transp_conv.conv.weight", "decoder weights (whole-network transfer)"),
        ("primus.json", [16, 16, 16], "primus-mae", "primus", "pretrained encoder and decoder",
         "decoder.0.0.weight", "decoder weights (whole-network transfer)"),
    ],
)  # fmt: skip
def test_overlays_pretrain_train_evaluate_and_infer(tmp_path, overlay, roi, pretraining, network, initialised, weight,
                                                   report):  # fmt: skip
    """configs/nnformer.json (nnFormer: masked-volume pretraining), configs/resenc.json (the ResEnc U-Net: S3D
    pretraining) and configs/primus.json (Primus: MAE of the whole network; both with fine-tuning that takes encoder
    and decoder) switch the hippocampus bundle: pretraining, fine-tuning from it, evaluation and inference all
    follow, and volmae-infer with the run's model file gives the same label map."""
    task = make_msd_folder(tmp_path / "task", shape=(20, 28, 20))
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    overlay = str(root / "configs" / overlay)
    small = {"roi_size": roi, "device": "cpu"}
    run_workflow([str(root / "configs" / "pretrain.json"), overlay], dataset_dir=str(task), roi_size=roi,
                 **{"pretrain#epochs": 1, "pretrain#device": "cpu", "pretrain#quiet": True})  # fmt: skip
    pretrained = root / "models" / "pretrained" / "model.pt"
    assert ModelArtifact.load(pretrained).kind == pretraining
    run_workflow([str(root / "configs" / "train.json"), overlay], dataset_dir=str(task), pretrained=str(pretrained),
                 **small, **{"train#trainer#max_epochs": 1})  # fmt: skip
    run = ModelArtifact.load(root / "runs" / "train" / "model.pt")
    assert run.kind == network and initialised in run.provenance.initialised_from
    assert report in (root / "runs" / "train" / "pretrained_load_report.txt").read_text()
    assert weight in torch.load(root / "models" / "model.pt", weights_only=True)
    configs = [str(root / "configs" / f) for f in ("train.json", "evaluate.json")] + [overlay]
    run_workflow(configs, dataset_dir=str(task), **small)
    assert (root / "runs" / "eval" / "summary.json").is_file()
    src = task / "imagesTr" / "case_000.nii.gz"
    run_workflow([str(root / "configs" / "inference.json"), overlay], "infer", input=str(src), **small)
    bundle_out = nib.load(root / "predictions" / "case_000.nii.gz")
    model = str(root / "runs" / "train" / "model.pt")  # the run's model file says which network it is
    done = infer(InferConfig([str(src)], model, output=str(tmp_path / "seg.nii.gz"), device="cpu", quiet=True))
    assert np.array_equal(np.asarray(nib.load(done[0].label_map).dataobj), np.asarray(bundle_out.dataobj))
