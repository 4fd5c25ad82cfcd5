"""``volmae.bundle`` helpers and a whole bundle round on synthetic volumes (runs in CI without real data):
train -> evaluate -> inference through MONAI's ``ConfigWorkflow``, then the same model through ``volmae-infer``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundle.conftest import items, run_workflow
from tests.conftest import save_nifti
from volmae.bundle import (
    end_distributed,
    fold_items,
    input_items,
    model_file,
    optimizer,
    unlabeled_items,
    with_pretrained,
)
from volmae.cli.common import find_volmae_error
from volmae.errors import ConfigError, DataError
from volmae.inference.infer import InferConfig, infer
from volmae.networks import build_unetr


def test_fold_items(synthetic_task):
    train, val = fold_items(synthetic_task, 0, "train"), fold_items(synthetic_task, 0, "val")
    assert len(train) + len(val) == 6 and not {t["image"] for t in train} & {v["image"] for v in val}
    assert all(set(t) == {"image", "label"} for t in train)
    assert len(fold_items(synthetic_task, 0, "train", fraction=0.5)) == round(0.5 * len(train))
    assert len(fold_items(synthetic_task, 0, "train", limit=2)) == 2
    with pytest.raises(ConfigError, match="part='test'"):
        fold_items(synthetic_task, 0, "test")
    with pytest.raises(ConfigError, match="dataset_dir is not set"):
        fold_items("", 0)


def test_unlabeled_and_input_items(synthetic_task):
    assert len(unlabeled_items(synthetic_task, fold=None)) == 6
    assert len(unlabeled_items(synthetic_task, fold=0)) == len(fold_items(synthetic_task, 0))
    assert all(set(i) == {"image"} for i in unlabeled_items(synthetic_task))
    assert len(input_items(synthetic_task / "imagesTr")) == 6
    with pytest.raises(DataError, match="input not found"):
        input_items(synthetic_task / "nothing")


def test_optimizer_layer_decay_sets_each_group_lr():
    net = build_unetr("vit-tiny", 1, 3, (16, 16, 16))
    opt = optimizer(net, 1e-3, 1e-4, layer_decay=0.5)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * 0.5**13)
    assert {g["lr"] for g in optimizer(net, 1e-3).param_groups} == {1e-3}
    with pytest.raises(ConfigError, match="lr=0"):
        optimizer(net, 0)


def test_with_pretrained_loads_the_encoder_of_a_bundle_model(tmp_path):
    src = build_unetr("vit-tiny", 1, 3, (16, 16, 16))
    torch.save(src.state_dict(), tmp_path / "model.pt")
    net = build_unetr("vit-tiny", 1, 5, (16, 16, 16))
    assert with_pretrained(net, None) is net and getattr(net, "load_report", None) is None
    with_pretrained(net, str(tmp_path / "model.pt"))
    assert net.load_report.ok
    assert torch.equal(net.encoder.blocks[3].mlp.linear1.weight, src.encoder.blocks[3].mlp.linear1.weight)


def test_model_file_says_how_to_get_weights(tmp_path):
    with pytest.raises(ConfigError, match="no trained weights in the bundle; train it first"):
        model_file(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"x")
    assert model_file(tmp_path) == str(tmp_path / "models" / "model.pt")


def test_end_distributed_waits_then_ends_the_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    end_distributed()  # no process group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    calls = []
    barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier") or barrier(*a, **k))
    end_distributed()
    assert calls == ["barrier"] and not dist.is_initialized()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The hippocampus bundle trained for 2 epochs on a synthetic task (its own copy)."""
    from tests.bundle.conftest import copy_bundle
    from tests.conftest import make_msd_folder

    tmp = tmp_path_factory.mktemp("bundle")
    task = make_msd_folder(tmp / "task", shape=(20, 28, 20))
    root = copy_bundle("hippocampus", tmp / "bundles")
    data = items(task)
    run_workflow(
        str(root / "train.json"),
        dataset_dir=str(task),
        **{"train#dataset#data": data[:4], "validate#dataset#data": data[4:]},
        **{"train#trainer#max_epochs": 2, "val_interval": 1, "device": "cpu"},
    )
    return root, task


def test_training_writes_plain_state_dicts_into_the_bundle(trained):
    root, _ = trained
    for name in ("model.pt", "model_final.pt"):
        state = torch.load(root / "models" / name, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values()) and "encoder.norm.weight" in state
        build_unetr("vit-tiny", 1, 3, (40, 56, 40)).load_state_dict(state)
    assert list((root / "runs" / "train").glob("events.out.tfevents.*"))


def test_evaluate_writes_per_case_metrics(trained):
    root, task = trained
    run_workflow(
        [str(root / "configs" / "train.json"), str(root / "configs" / "evaluate.json")],
        dataset_dir=str(task),
        **{"validate#dataset#data": items(task)[4:], "device": "cpu"},
    )
    raw = (root / "runs" / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert raw[0].startswith("filename") and len(raw) == 3
    assert (root / "runs" / "eval" / "val_hd95_raw.csv").is_file()


def test_bundle_inference_and_volmae_infer_write_the_same_label_map(trained, tmp_path):
    root, task = trained
    src = task / "imagesTr" / "case_000.nii.gz"
    run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(src), device="cpu", amp=False)
    bundle_out = nib.load(root / "predictions" / "case_000_seg.nii.gz")
    ref = nib.load(src)
    assert bundle_out.shape == ref.shape and np.allclose(bundle_out.affine, ref.affine)
    done = infer(
        InferConfig([str(src)], bundle=str(root), output=str(tmp_path / "seg.nii.gz"), device="cpu", quiet=True)
    )
    cli_out = nib.load(done[0].label_map)
    assert np.array_equal(np.asarray(cli_out.dataobj), np.asarray(bundle_out.dataobj))


def _bf16_spy(wf) -> list:
    """dtypes of the first transformer MLP's outputs in every call of the workflow's network."""
    seen: list = []
    net = wf.parser.get_parsed_content("network")
    net.encoder.blocks[0].mlp.linear1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_cpu_bf16_override_autocasts_bundle_inference(trained, tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    import volmae.utils.runtime as runtime
    from volmae.inference.inferers import Bf16SlidingWindowInferer

    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)
    root, task = trained
    src = task / "imagesTr" / "case_000.nii.gz"
    maps, seen = {}, {}
    for flag in (False, True):
        out = tmp_path / str(flag)
        wf = ConfigWorkflow(
            config_file=str(root / "configs" / "inference.json"), workflow_type="infer", input=str(src),
            device="cpu", output_dir=str(out), cpu_bf16=flag,
        )  # fmt: skip
        wf.initialize()
        inferer = wf.parser.get_parsed_content("inferer")
        assert isinstance(inferer, Bf16SlidingWindowInferer) and inferer.cpu_bf16 is flag
        seen[flag] = _bf16_spy(wf)
        wf.run()
        wf.finalize()
        maps[flag] = np.asarray(nib.load(out / "case_000_seg.nii.gz").dataobj)
    assert set(seen[False]) == {torch.float32} and set(seen[True]) == {torch.bfloat16}
    assert maps[True].shape == maps[False].shape and (maps[True] == maps[False]).mean() > 0.99


def test_cpu_bf16_override_trains_the_bundle(tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    import volmae.utils.runtime as runtime
    from tests.bundle.conftest import copy_bundle
    from tests.conftest import make_msd_folder

    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)
    task = make_msd_folder(tmp_path / "task", shape=(20, 28, 20))
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    data = items(task)
    wf = ConfigWorkflow(
        config_file=str(root / "train.json"), workflow_type="train", dataset_dir=str(task), cpu_bf16=True,
        **{"train#dataset#data": data[:2], "validate#dataset#data": data[4:5]},
        **{"train#trainer#max_epochs": 1, "val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    wf.initialize()
    seen = _bf16_spy(wf)
    wf.run()
    wf.finalize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert set(seen) == {torch.bfloat16} and np.isfinite(float(trainer.state.output[0]["loss"]))
    state = torch.load(root / "models" / "model_final.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # fp32 master weights


def test_wrong_channel_count_is_named(trained, tmp_path):
    root, task = trained
    two = save_nifti(tmp_path / "two.nii.gz", np.random.default_rng(0).normal(size=(20, 28, 20, 2)).astype(np.float32))
    with pytest.raises(DataError, match="two.nii.gz: has 2 channel\\(s\\), the task expects 1"):
        infer(InferConfig([str(two)], bundle=str(root), output=str(tmp_path / "o"), device="cpu", quiet=True))
    with pytest.raises(RuntimeError) as err:
        run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(two), device="cpu")
    assert "image has 2 channel(s), the model expects 1" in str(find_volmae_error(err.value))
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_missing_weights(bundle_dir, synthetic_task, tmp_path):
    root = bundle_dir("hippocampus")
    with pytest.raises(ConfigError, match="no trained weights"):
        infer(InferConfig([str(synthetic_task / "imagesTr")], bundle=str(root), output=str(tmp_path / "o")))
    with pytest.raises(RuntimeError) as err:
        run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(synthetic_task / "imagesTr"))
    assert "no trained weights" in str(find_volmae_error(err.value))
    assert not (root / "predictions").exists()


def test_metadata_labels_reach_volmae_infer(trained):
    from volmae.inference.infer import model_classes

    root, _ = trained
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    names = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert model_classes(bundle=str(root)) == {int(k): v for k, v in names.items()}


def test_volmae_infer_bundle_errors_exit_2(bundle_dir, synthetic_task, tmp_path, capsys, monkeypatch):
    from volmae.cli.infer import main

    scan = str(synthetic_task / "imagesTr" / "case_000.nii.gz")
    monkeypatch.chdir(tmp_path)
    assert main([scan, "--model", "m.pt", "--bundle", "btcv"]) == 2
    assert "give one of --model and --bundle" in capsys.readouterr().err
    assert main(["--list-classes", "--bundle", "no_such_bundle"]) == 2
    err = capsys.readouterr().err
    assert "bundle 'no_such_bundle' not found" in err and "brats, btcv, hippocampus" in err
    assert main([scan, "--bundle", str(bundle_dir("hippocampus"))]) == 2
    assert "no trained weights in the bundle" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.nii.gz"))  # nothing written
    assert main([scan, "--bundle", str(synthetic_task)]) == 2
    assert "not a MONAI bundle" in capsys.readouterr().err


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
    with pytest.raises(ConfigError, match="give one of --model and --bundle"):
        evaluate(EvaluateConfig("m.pt", str(task), bundle=str(root), out_dir=str(tmp_path / "ev2")))


def test_nnformer_by_configuration_alone(tmp_path, synthetic_task):
    """The hippocampus bundle switched to nnFormer by its ``preset``: masked-volume pretraining, fine-tuning from it,
    bundle inference and ``volmae-infer --bundle`` all follow."""
    from tests.bundle.conftest import copy_bundle, edit_bundle
    from tests.conftest import make_msd_folder

    task = make_msd_folder(tmp_path / "task", shape=(20, 28, 20))
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    edit_bundle(root, ("train.json", "inference.json", "pretrain.json"), preset="nnformer-tiny", roi_size=[16, 32, 16])
    run_workflow(
        str(root / "pretrain.json"), "train", dataset_dir=str(task),
        **{"pretrain#epochs": 1, "pretrain#device": "cpu", "pretrain#quiet": True},
    )  # fmt: skip
    mvm = root / "models" / "mae" / "model.pt"
    assert torch.load(mvm, weights_only=True)["kind"] == "masked-volume"
    data = items(task)
    run_workflow(
        str(root / "train.json"), dataset_dir=str(task), pretrained=str(mvm),
        **{"train#dataset#data": data[:4], "validate#dataset#data": data[4:]},
        **{"train#trainer#max_epochs": 1, "val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "encoder.stages.0.blocks.0.attn.qkv.weight" in state
    src = task / "imagesTr" / "case_000.nii.gz"
    run_workflow(str(root / "configs" / "inference.json"), "infer", input=str(src), device="cpu", amp=False)
    bundle_out = nib.load(root / "predictions" / "case_000_seg.nii.gz")
    done = infer(
        InferConfig([str(src)], bundle=str(root), output=str(tmp_path / "seg.nii.gz"), device="cpu", quiet=True)
    )
    assert np.array_equal(np.asarray(nib.load(done[0].label_map).dataobj), np.asarray(bundle_out.dataobj))
