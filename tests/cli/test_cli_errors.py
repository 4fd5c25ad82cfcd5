"""Bad input to the console scripts: exit status 2 and one ``volmae-<stage>: error: <file>: <problem>`` line on
stderr, never a traceback.

Three cases run the installed console scripts in a subprocess (each start imports torch + MONAI, ~5 s); the
other cases call the same ``main(argv)`` in-process, which is what the scripts run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.cli.conftest import MAINS, assert_clean_error, run_main, run_script, truncate
from volmae.data.paths import dataset_path

# --------------------------------------------------------------------------------------------------- subprocess


def test_script_train_missing_dataset_dir(tmp_path):
    missing = tmp_path / "no_such_task"
    p = run_script("volmae-train", "--dataset-dir", str(missing), "--out-dir", str(tmp_path / "out"), "--device", "cpu")
    assert_clean_error(p.returncode, p.stderr, "volmae-train", str(missing), "dataset folder not found")
    assert not (tmp_path / "out").exists()


def test_script_pretrain_dataset_json_not_json(task, tmp_path):
    (task / "dataset.json").write_text('{"training": [oops')
    p = run_script("volmae-pretrain", "--dataset-dir", str(task), "--out-dir", str(tmp_path / "out"), "--device", "cpu")
    assert_clean_error(p.returncode, p.stderr, "volmae-pretrain", str(task / "dataset.json"), "not valid JSON")


def test_script_evaluate_garbage_model(task, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(np.random.default_rng(0).bytes(4096))
    p = run_script(
        "volmae-evaluate",
        "--model",
        str(model),
        "--dataset-dir",
        str(task),
        "--out-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    )
    assert_clean_error(p.returncode, p.stderr, "volmae-evaluate", str(model), "not a readable PyTorch file")


# --------------------------------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("prog", ["volmae-train", "volmae-pretrain"])
def test_missing_dataset_dir(capsys, tmp_path, prog):
    missing = tmp_path / "absent"
    rc, err = run_main(capsys, prog, "--dataset-dir", str(missing), "--out-dir", str(tmp_path / "o"), "--device", "cpu")
    assert_clean_error(rc, err, prog, str(missing), "dataset folder not found")


def test_evaluate_missing_dataset_dir_with_missing_model(capsys, tmp_path):
    model = tmp_path / "none.pt"
    rc, err = run_main(
        capsys, "volmae-evaluate", "--model", str(model), "--dataset-dir", str(tmp_path / "absent"), "--device", "cpu"
    )
    assert_clean_error(rc, err, "volmae-evaluate", str(model))


@pytest.mark.parametrize("prog", ["volmae-train", "volmae-pretrain"])
def test_dataset_json_not_json(capsys, task, tmp_path, prog):
    (task / "dataset.json").write_bytes(b"\x00\x01 not json")
    rc, err = run_main(capsys, prog, "--dataset-dir", str(task), "--out-dir", str(tmp_path / "o"), "--device", "cpu")
    assert_clean_error(rc, err, prog, str(task / "dataset.json"), "not valid JSON")


def test_dataset_json_missing(capsys, tmp_path):
    (tmp_path / "empty_task").mkdir()
    rc, err = run_main(capsys, "volmae-train", "--dataset-dir", str(tmp_path / "empty_task"), "--device", "cpu")
    assert_clean_error(rc, err, "volmae-train", str(tmp_path / "empty_task" / "dataset.json"))


@pytest.mark.parametrize("prog", ["volmae-train", "volmae-pretrain"])
def test_truncated_image(capsys, task, tmp_path, prog):
    bad = truncate(task / "imagesTr" / "case_002.nii.gz")  # a training case of fold 0
    rc, err = run_main(
        capsys,
        prog,
        "--dataset-dir",
        str(task),
        "--out-dir",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--quiet",
    )
    assert_clean_error(rc, err, prog, str(bad), "truncated")


def test_truncated_image_without_cache(capsys, task, tmp_path):
    """Not cached up front: the error surfaces inside the training loop's DataLoader, still as one line."""
    bad = truncate(task / "imagesTr" / "case_003.nii.gz")
    rc, err = run_main(
        capsys,
        "volmae-train",
        "--dataset-dir",
        str(task),
        "--out-dir",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--cache",
        "none",
        "--quiet",
        "--val-every",
        "0",
        "--preset",
        "vit-tiny",
        "--roi-size",
        "16",
        "16",
        "16",
        "--batch-size",
        "4",
    )
    assert_clean_error(rc, err, "volmae-train", str(bad), "truncated")


def test_missing_image_file_is_caught_before_training(capsys, task, tmp_path):
    gone = task / "imagesTr" / "case_004.nii.gz"
    gone.unlink()
    rc, err = run_main(
        capsys, "volmae-train", "--dataset-dir", str(task), "--out-dir", str(tmp_path / "o"), "--device", "cpu",
        "--val-every", "0",  # every training case trains (with validation on, this one may be a validation case)
    )  # fmt: skip
    # preflight lists every problem under a one-line summary
    msg = assert_clean_error(
        rc, err, "volmae-train", "problem(s) in the training datalist", str(gone), "file not found", one_line=False
    )
    assert msg.rstrip().count("\n") == 1
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_label_shape_mismatch_is_caught_before_training(capsys, task, tmp_path):
    label = task / "labelsTr" / "case_001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 14, 13), np.uint8), np.eye(4)), str(label))
    rc, err = run_main(
        capsys, "volmae-train", "--dataset-dir", str(task), "--out-dir", str(tmp_path / "o"), "--device", "cpu"
    )
    assert_clean_error(rc, err, "volmae-train", str(label), "does not match", one_line=False)


def test_unknown_preprocessing_preset(capsys, task, tmp_path):
    rc, err = run_main(
        capsys, "volmae-train", "--dataset-dir", str(task), "--preprocessing", "brain", "--device", "cpu"
    )
    assert_clean_error(rc, err, "volmae-train", "'brain'")


def test_evaluate_missing_model(capsys, task, tmp_path):
    model = tmp_path / "runs" / "model.pt"
    rc, err = run_main(capsys, "volmae-evaluate", "--model", str(model), "--dataset-dir", str(task), "--device", "cpu")
    assert_clean_error(rc, err, "volmae-evaluate", str(model), "model file not found")


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "empty file"),
        (b"PK\x03\x04 truncated zip", "not a readable PyTorch file"),
        ("list", "expected a dict, found list"),
        ("dict", "a plain state dict (no network config or task), not a volmae model file"),
        ("mae", "a mae pretraining model, not a segmentation model; pass the model.pt written by fine-tuning"),
        ("future", "written by a newer volmae (model format version 3"),
        ("damaged", "a damaged volmae model file (missing 'task')"),
    ],
    ids=["empty", "bad-zip", "list", "foreign-dict", "mae", "future", "damaged"],
)
def test_evaluate_bad_model_files(capsys, task, tmp_path, content, problem):
    from tests.conftest import model_file
    from volmae.networks.registry import build_mae

    model = tmp_path / "model.pt"
    if content == "list":
        torch.save([1, 2, 3], model)
    elif content == "dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, model)
    elif content in ("mae", "future", "damaged"):
        model_file(build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1), model)
        data = torch.load(model, weights_only=True)
        data.update(version=3) if content == "future" else data.pop("task") if content == "damaged" else None
        torch.save(data, model)
    else:
        model.write_bytes(content)
    rc, err = run_main(capsys, "volmae-evaluate", "--model", str(model), "--dataset-dir", str(task), "--device", "cpu")
    assert_clean_error(rc, err, "volmae-evaluate", str(model), problem)


def test_model_pickle_with_code_is_refused(capsys, task, tmp_path):
    """weights_only loading: a checkpoint that would run code on load is an error, not an execution."""
    marker = tmp_path / "pwned"
    model = tmp_path / "evil.pt"
    torch.save({"kind": "unetr", "payload": _Exploit(str(marker))}, model)
    rc, err = run_main(capsys, "volmae-evaluate", "--model", str(model), "--dataset-dir", str(task), "--device", "cpu")
    assert_clean_error(rc, err, "volmae-evaluate", str(model))
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.realdata
def test_dicom_folder_with_two_series_in_a_datalist(capsys, task, tmp_path):
    crops = dataset_path("dicom_hippocampus_crops")
    if crops is None:
        pytest.skip("real data not found: set VOLMAE_DATA or put ../shared/data beside the repo")
    mixed = tmp_path / "mixed_series"
    mixed.mkdir()
    for study, sub in [("Study1", "13_HCropVolume"), ("Study3", "11_HCropVolume")]:
        for f in (crops / study / sub).iterdir():
            shutil.copy(f, mixed / f"{study}_{f.name}")
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"][2]["image"] = str(mixed)
    (task / "dataset.json").write_text(json.dumps(meta))
    rc, err = run_main(
        capsys,
        "volmae-pretrain",
        "--dataset-dir",
        str(task),
        "--out-dir",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--quiet",
    )
    assert_clean_error(rc, err, "volmae-pretrain", str(mixed), "2 DICOM series")


@pytest.mark.parametrize("prog", ["volmae-train", "volmae-pretrain"])
def test_a_step_budget_below_one_names_the_value(capsys, task, tmp_path, prog):
    rc, err = run_main(capsys, prog, "--dataset-dir", str(task), "--out-dir", str(tmp_path / "o"), "--steps", "0")
    assert_clean_error(rc, err, prog, "steps=0", "must be >= 1")
    assert not (tmp_path / "o").exists()


def test_usage_errors_are_argparse_exits(capsys):
    with pytest.raises(SystemExit) as info:
        MAINS["volmae-train"]([])  # --dataset-dir is required
    assert info.value.code == 2
    assert "--dataset-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        MAINS["volmae-train"](["--dataset-dir", "x", "--epochs", "many"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "preset, roi, nearest",
    [
        ("nnformer-tiny", ["40", "56", "40"], "(32, 48, 32) or (48, 64, 48)"),
        ("vit-tiny", ["40", "56", "44"], "or (40, 56, 48)"),
    ],
)
def test_roi_that_the_network_cannot_tile_names_the_nearest_sizes(synthetic_task, tmp_path, preset, roi, nearest):
    p = run_script(
        "volmae-train", "--dataset-dir", str(synthetic_task), "--out-dir", str(tmp_path / "out"), "--device", "cpu",
        "--preset", preset, "--roi-size", *roi,
    )  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"volmae-train: error: preset '{preset}': img_size=") and nearest in p.stderr
