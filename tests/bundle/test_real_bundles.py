"""Each bundle driven end to end on real volumes: hippocampus (MSD Task04), BraTS 2013 (FLAIR + T1c, converted), and
BTCV on real CT (3D-IRCADb-01, BTCV numbering) plus TotalSegmentator's example CT with its model-made organs mapped
to the 13 BTCV labels (a pipeline check, never an accuracy figure). Small ROIs / presets and few epochs keep it to
CPU minutes. ``slow`` (run by hand) runs the shipped ViT-B/16 at 96^3, the held-out IRCADb evaluation, the
TotalSegmentator CT and torchrun for the btcv / brats bundles; the quick suite keeps one real run of each step."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundle.conftest import copy_bundle, edit_bundle, items, run_workflow
from volmae.inference.infer import InferConfig, infer

LIMITS = {
    "train#dataset#data": "$volmae.bundle.fold_items(@dataset_dir, @fold, 'train', limit=4)",
    "validate#dataset#data": "$volmae.bundle.fold_items(@dataset_dir, @fold, 'val', limit=2)",
}


def _bundle_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _overrides(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k}", str(v))]


def test_hippocampus_literal_commands_write_into_the_bundle(msd_hippocampus, tmp_path):
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    run = tmp_path / "elsewhere"
    run.mkdir()
    limits = _overrides({**LIMITS, "train#trainer#max_epochs": 1, "val_interval": 1, "device": "cpu"})
    for run_id, config in [("training", "train.json"), ("run", "configs/train.json")]:
        out = _bundle_cli(tmp_path, "run", run_id, "--config_file", f"bundles/hippocampus/{config}", *limits)
        assert out.returncode == 0, out.stderr[-3000:]
    assert (root / "models" / "model.pt").is_file() and (root / "runs" / "train" / "model.pt").is_file()
    assert not list(tmp_path.glob("models")) and not list(run.iterdir())

    scan = msd_hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    out = _bundle_cli(run, "run", "inference", "--config_file", str(root / "inference.json"), "--input", str(scan))
    assert out.returncode == 0, out.stderr[-3000:]
    seg = nib.load(root / "predictions" / "hippocampus_001.nii.gz")
    ref = nib.load(scan)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    # the CPU bf16 lever from the command line: the same label map but for bf16 rounding at near-ties
    out = _bundle_cli(
        run, "run", "inference", "--config_file", str(root / "inference.json"), "--input", str(scan),
        "--cpu_bf16", "true", "--output_dir", str(run / "bf16"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    bf16 = np.asarray(nib.load(run / "bf16" / "hippocampus_001.nii.gz").dataobj)
    assert bf16.shape == seg.shape and (bf16 == np.asarray(seg.dataobj)).mean() > 0.99

    # TorchScript as the model zoo exports it (torch.jit.script): the scripted model equals the eager one
    ts = root / "models" / "model.ts"
    cfg = root / "configs"
    out = _bundle_cli(
        run, "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(root / "models" / "model.pt"),
        "--meta_file", str(cfg / "metadata.json"), "--config_file", str(cfg / "inference.json"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    from volmae.artifact.bundles import bundle_network
    from volmae.networks import build_network

    eager = build_network(bundle_network(root))  # the bundle's own network (the ResEnc U-Net)
    eager.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    x = torch.randn(1, 1, 40, 56, 40)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(ts))(x), eager.eval()(x), atol=1e-4)


def _mini_task(src: Path, dst: Path, n: int) -> Path:
    """An MSD folder linking the first ``n`` cases of ``src`` (so pretraining reads few volumes)."""
    meta = json.loads((src / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True)
    meta["training"] = meta["training"][:n]
    meta["test"] = []
    for e in meta["training"]:
        for key in ("image", "label"):
            (dst / e[key]).symlink_to((src / e[key]).resolve())
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (through symlinks: the real volumes they point to)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_hippocampus_pretrain_then_finetune_from_it(msd_hippocampus, tmp_path):
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    task = _mini_task(msd_hippocampus, tmp_path / "task", 10)
    before = _digests(task)
    run_workflow(
        str(root / "pretrain.json"), None, dataset_dir=str(task), **{"pretrain#epochs": 1, "pretrain#quiet": True}
    )
    mae = root / "models" / "pretrained" / "model.pt"
    assert mae.is_file() and list((root / "models" / "pretrained" / "pictures").glob("*.png"))
    wf = run_workflow(
        str(root / "train.json"), dataset_dir=str(task), pretrained=str(mae),
        **{**LIMITS, "train#trainer#max_epochs": 1, "val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    report = (root / "runs" / "train" / "pretrained_load_report.txt").read_text()
    assert "0 missing" in report and "0 shape mismatches" in report
    assert _digests(task) == before and len(before) == 21, "a bundle run modified an input"
    from volmae.networks.registry import RECIPES

    # a pretrained run's layer decay: the family recipe's (the ViT's 0.75), the bundle sets none of its own
    assert wf.parser.get_parsed_content("finetune").layer_decay is None and RECIPES["vit"].layer_decay == 0.75
    from volmae.artifact import ModelArtifact

    assert ModelArtifact.load(root / "runs" / "train" / "model.pt").provenance.initialised_from.endswith(str(mae))


def test_hippocampus_nnformer_overlay_end_to_end(msd_hippocampus, tmp_path):
    """The nnFormer configuration of the hippocampus bundle on real MRI, as shipped but for the budget: masked-volume
    pretraining (1 epoch, 8 scans), fine-tuning from it (1 epoch, 4 cases), evaluation on the held-out fold and
    inference, each through configs/nnformer.json."""
    from volmae.artifact import ModelArtifact

    root = copy_bundle("hippocampus", tmp_path / "bundles")
    task = _mini_task(msd_hippocampus, tmp_path / "task", 10)
    cfg, nn = root / "configs", str(root / "configs" / "nnformer.json")
    run_workflow([str(cfg / "pretrain.json"), nn], None, dataset_dir=str(task),
                 **{"pretrain#epochs": 1, "pretrain#quiet": True})  # fmt: skip
    pretrained = root / "models" / "pretrained" / "model.pt"
    assert ModelArtifact.load(pretrained).kind == "masked-volume"
    run_workflow([str(cfg / "train.json"), nn], dataset_dir=str(task), pretrained=str(pretrained),
                 **{**LIMITS, "train#trainer#max_epochs": 1, "device": "cpu"})  # fmt: skip
    run = ModelArtifact.load(root / "runs" / "train" / "model.pt")
    assert (run.kind, run.network.window) == ("nnformer", (48, 64, 48)) and len(run.provenance.training_cases) == 4
    assert "0 missing" in (root / "runs" / "train" / "pretrained_load_report.txt").read_text()
    run_workflow([str(cfg / "train.json"), str(cfg / "evaluate.json"), nn], dataset_dir=str(task), device="cpu")
    summary = json.loads((root / "runs" / "eval" / "summary.json").read_text())
    assert summary["mean"]["n"] == 2 and 0.0 <= summary["mean"]["dice_mean"] <= 1.0  # the 2 held-out cases
    scan = msd_hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    run_workflow([str(cfg / "inference.json"), nn], "infer", input=str(scan), device="cpu")
    seg = nib.load(root / "predictions" / "hippocampus_001.nii.gz")
    assert seg.shape == nib.load(scan).shape and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


def test_hippocampus_multi_process_training(msd_hippocampus, tmp_path):
    """multi_gpu_train.json under torchrun: two gloo processes on the CPU (NCCL + one GPU each when present)."""
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    dice = _torchrun_training(root, tmp_path, {**LIMITS, "train#trainer#max_epochs": 1, "val_interval": 1})
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the DDP wrapper is not saved
    # validation ran on both ranks' shares of the validation cases and was reduced into one Dice
    assert len(dice) == 1 and 0.0 <= dice[0] <= 1.0


def _cropped_task(src: Path, dst: Path, size: tuple[int, int, int]) -> Path:
    """The task's cases cut to their central ``size`` voxels (affines shifted to match): real voxels, CPU-test size."""
    meta = json.loads((src / "dataset.json").read_text())
    for e in meta["training"]:
        for key in ("image", "label"):
            img = nib.load(src / e[key])
            box = tuple(slice(max(0, (n - s) // 2), max(0, (n - s) // 2) + s) for n, s in zip(img.shape[:3], size))
            (dst / e[key]).parent.mkdir(parents=True, exist_ok=True)
            nib.save(img.slicer[box], dst / e[key])
    (dst / "dataset.json").write_text(json.dumps({**meta, "test": []}))
    return dst


SMALL = {"preset": "vit-tiny", "roi_size": [64, 64, 64]}
TWO_CHANNELS = {"channel_names": ["FLAIR", "T1c"]}  # BraTS 2013 as converted


@pytest.fixture(scope="module")
def brats_task(tmp_path_factory, brats2013):
    from volmae.data.convert import convert_brats

    tmp = tmp_path_factory.mktemp("brats")
    convert_brats(brats2013, tmp / "full")
    return _cropped_task(tmp / "full", tmp / "task", (128, 128, 96))


def test_brats_two_channel_regions(brats_task, tmp_path):
    root = copy_bundle("brats", tmp_path / "bundles")
    edit_bundle(root, ("train.json", "inference.json"), **TWO_CHANNELS, **SMALL)
    data = items(brats_task)
    run_workflow(
        str(root / "train.json"), dataset_dir=str(brats_task),
        **{"train#dataset#data": data[:3], "validate#dataset#data": data[3:], "train#trainer#max_epochs": 1},
        **{"val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    assert (root / "models" / "model.pt").is_file()
    scan = data[3]["image"]
    done = infer(InferConfig([scan], bundle=str(root), output=str(tmp_path / "seg.nii.gz"), overlap=0.25, quiet=True))
    seg, ref = nib.load(done[0].label_map), nib.load(scan)
    assert seg.shape == ref.shape[:3] and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    from volmae.evaluation.evaluate import EvaluateConfig, evaluate

    case = Path(scan).name.split(".")[0]
    report = evaluate(
        EvaluateConfig(None, str(brats_task), str(tmp_path / "ev"), cases=[case], overlap=0.25, bundle=str(root))
    )
    assert list(report.cases[0].dice) == ["TC", "WT", "ET"]  # scored per region, as BraTS is


def _btcv_small(root: Path) -> None:
    edit_bundle(root, ("train.json", "inference.json"), **SMALL)


def _train_btcv_on_ircadb(ircadb_ct: Path, tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """The BTCV bundle (vit-tiny, 64^3) one epoch on two cropped IRCADb CTs, validated on the third."""
    root = copy_bundle("btcv", tmp_path / "bundles")
    _btcv_small(root)
    task = _cropped_task(ircadb_ct, tmp_path / "task", (256, 256, 120))
    data = items(task)
    run_workflow(
        str(root / "train.json"), dataset_dir=str(task),
        **{"train#dataset#data": data[:2], "validate#dataset#data": data[2:], "train#trainer#max_epochs": 1},
        **{"val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    return root, task, data


def test_btcv_on_real_ct(ircadb_ct, tmp_path):
    root, _, data = _train_btcv_on_ircadb(ircadb_ct, tmp_path)
    scan = data[2]["image"]
    done = infer(InferConfig([scan], bundle=str(root), output=str(tmp_path / "o"), overlap=0.25, quiet=True))
    seg, ref = nib.load(done[0].label_map), nib.load(scan)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(14))


@pytest.mark.slow
def test_btcv_held_out_ct_is_scored_on_its_annotated_organs_only(ircadb_ct, tmp_path):
    """IRCADb masks only some organs per case (dataset.json ``labels_present``): the others score nan, not 1."""
    from volmae.data.convert import BTCV_LABELS
    from volmae.evaluation.evaluate import EvaluateConfig, evaluate

    root, task, data = _train_btcv_on_ircadb(ircadb_ct, tmp_path)
    case = Path(data[2]["image"]).name.split(".")[0]
    annotated = set(json.loads((task / "dataset.json").read_text())["labels_present"][case])
    ev = EvaluateConfig(None, str(task), str(tmp_path / "ev"), cases=[case], overlap=0.25, bundle=str(root))
    dice = evaluate(ev).cases[0].dice
    assert len(annotated) < 14 and all(np.isnan(dice[BTCV_LABELS[k]]) == (k not in annotated) for k in range(1, 14))


@pytest.mark.slow
def test_btcv_on_totalsegmentator_example_mapped_to_btcv(totalseg_examples, tmp_path):
    from volmae.data.convert import BTCV_LABELS, totalseg_to_btcv

    src = totalseg_examples
    task = tmp_path / "task"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "imagesTr" / "ts_ct.nii.gz").symlink_to(src / "example_ct_sm.nii.gz")
    seg = nib.load(src / "example_seg.nii.gz")
    mapped = totalseg_to_btcv(np.asarray(seg.dataobj))
    nib.save(nib.Nifti1Image(mapped, seg.affine), task / "labelsTr" / "ts_ct.nii.gz")
    entry = {"image": "./imagesTr/ts_ct.nii.gz", "label": "./labelsTr/ts_ct.nii.gz"}
    meta = {"name": "ts", "modality": {"0": "CT"}, "labels": {str(k): v for k, v in BTCV_LABELS.items()}}
    (task / "dataset.json").write_text(json.dumps({**meta, "training": [entry]}))
    root = copy_bundle("btcv", tmp_path / "bundles")
    _btcv_small(root)
    data = items(task)
    run_workflow(
        str(root / "train.json"), dataset_dir=str(task),
        **{"train#dataset#data": data, "validate#dataset#data": data, "train#trainer#max_epochs": 1},
        **{"val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    assert (root / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_btcv_shipped_configuration_on_real_ct(ircadb_ct, tmp_path):
    """The bundle as shipped (UNETR ViT-B/16, 96^3 ROI): one epoch on two IRCADb CTs, validation on the third."""
    root = copy_bundle("btcv", tmp_path / "bundles")
    data = items(ircadb_ct)
    run_workflow(
        str(root / "train.json"), dataset_dir=str(ircadb_ct),
        **{"train#dataset#data": data[:2], "validate#dataset#data": data[2:], "train#trainer#max_epochs": 1},
        **{"val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    done = infer(InferConfig([data[2]["image"]], bundle=str(root), output=str(tmp_path / "o"), quiet=True))
    assert nib.load(done[0].label_map).shape == nib.load(data[2]["image"]).shape


@pytest.mark.slow
def test_brats_shipped_configuration_with_two_channels(brats2013, tmp_path):
    """The brats bundle as shipped (UNETR ViT-B/16, 96^3) but for the 2-channel (FLAIR, T1c) BraTS 2013 cases:
    one epoch on three whole converted volumes, validation and inference on the fourth."""
    from volmae.data.convert import convert_brats

    convert_brats(brats2013, tmp_path / "task")
    root = copy_bundle("brats", tmp_path / "bundles")
    edit_bundle(root, ("train.json", "inference.json"), **TWO_CHANNELS)
    data = items(tmp_path / "task")
    run_workflow(
        str(root / "train.json"), dataset_dir=str(tmp_path / "task"),
        **{"train#dataset#data": data[:3], "validate#dataset#data": data[3:], "train#trainer#max_epochs": 1},
        **{"val_interval": 1, "device": "cpu"},
    )  # fmt: skip
    done = infer(InferConfig([data[3]["image"]], bundle=str(root), output=str(tmp_path / "o"), quiet=True))
    assert nib.load(done[0].label_map).shape == nib.load(data[3]["image"]).shape[:3]


def _torchrun_training(root: Path, cwd: Path, overrides: dict) -> list[float]:
    """``torchrun --nproc_per_node=2 -m monai.bundle run training`` with the bundle's multi_gpu_train.json overlay
    (gloo on the CPU); returns the validation Dice of each epoch (the run's history)."""
    cfg = f"['{root}/configs/train.json','{root}/configs/multi_gpu_train.json']"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run(
        [*torchrun, "-m", "monai.bundle", "run", "training", "--config_file", cfg, *_overrides(overrides)],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((root / "runs" / "train" / "history.json").read_text())
    return [h["val_dice"] for h in history if "val_dice" in h]


@pytest.mark.slow  # the quick suite runs hippocampus's torchrun test; all overlays come from volmae.bundle.configs
@pytest.mark.parametrize("name", ["btcv", "brats"])
def test_multi_process_training_of_the_ct_and_tumour_bundles(name, request, tmp_path):
    """The issue's command for btcv (real abdominal CT) and brats (real two-channel glioma MRI), CPU-sized."""
    root = copy_bundle(name, tmp_path / "bundles")
    if name == "btcv":
        task = _cropped_task(request.getfixturevalue("ircadb_ct"), tmp_path / "task", (256, 256, 120))
        _btcv_small(root)
    else:
        task = request.getfixturevalue("brats_task")
        edit_bundle(root, ("train.json",), **TWO_CHANNELS, **SMALL)
    data = [{"image": it["image"], "label": it["label"]} for it in items(task)]
    (tmp_path / "train.json").write_text(json.dumps(data[:2]))
    (tmp_path / "val.json").write_text(json.dumps(data[-2:]))  # two held-out cases: one per rank
    dice = _torchrun_training(
        root,
        tmp_path,
        {
            "dataset_dir": task,
            "train#dataset#data": f"$__import__('json').load(open('{tmp_path / 'train.json'}'))",
            "validate#dataset#data": f"$__import__('json').load(open('{tmp_path / 'val.json'}'))",
            "train#trainer#max_epochs": 1,
            "val_interval": 1,
        },
    )
    assert len(dice) == 1 and 0.0 <= dice[0] <= 1.0
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["btcv", "brats"])
def test_the_nnformer_configuration_of_the_ct_and_tumour_bundles_on_real_data(name, request, tmp_path):
    """configs/nnformer.json of btcv (nnformer-synapse, 64 x 128 x 128) and brats (nnformer-tumor, 128^3) as shipped
    but for the budget: one fine-tuning epoch on real CT (two cropped IRCADb CTs) / real two-channel glioma MRI
    (three cropped BraTS 2013 cases), then evaluation on the held-out case and inference."""
    from volmae.artifact import ModelArtifact

    root = copy_bundle(name, tmp_path / "bundles")
    if name == "btcv":
        task = _cropped_task(request.getfixturevalue("ircadb_ct"), tmp_path / "task", (256, 256, 120))
    else:
        task = Path(shutil.copytree(request.getfixturevalue("brats_task"), tmp_path / "task"))  # splits.json below
        edit_bundle(root, ("train.json", "inference.json"), **TWO_CHANNELS)
    (task / "splits.json").write_text(json.dumps({"folds": [[items(task)[-1]["image"].split("/")[-1].split(".")[0]]]}))
    cfg, nn = root / "configs", str(root / "configs" / "nnformer.json")
    run_workflow([str(cfg / "train.json"), nn], dataset_dir=str(task), device="cpu", val_fraction=0.0,
                 **{"train#trainer#max_epochs": 1, "finetune#batch_size": 1, "finetune#num_samples": 1})  # fmt: skip
    run = ModelArtifact.load(root / "runs" / "train" / "model.pt")
    assert (run.kind, run.network.preset) == ("nnformer", {"btcv": "nnformer-synapse", "brats": "nnformer-tumor"}[name])
    run_workflow([str(cfg / "train.json"), str(cfg / "evaluate.json"), nn], dataset_dir=str(task), device="cpu")
    summary = json.loads((root / "runs" / "eval" / "summary.json").read_text())
    assert summary["mean"]["n"] == 1 and 0.0 <= summary["mean"]["dice_mean"] <= 1.0
    scan = items(task)[-1]["image"]
    run_workflow([str(cfg / "inference.json"), nn], "infer", input=scan, device="cpu")
    (seg,) = (root / "predictions").glob("*.nii.gz")
    assert nib.load(seg).shape == nib.load(scan).shape[:3]
