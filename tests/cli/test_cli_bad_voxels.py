"""Bad voxels and bad shapes through ``volmae-train``: one clear error naming the file, and nothing already
written (checkpoint, model) is lost or changed."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np

from tests.cli.conftest import assert_clean_error, run_main

TRAIN = ["--device", "cpu", "--quiet", "--val-every", "0", "--roi-size", "16", "16", "16", "--batch-size", "4"]


def train(capsys, task, out, *extra):
    return run_main(capsys, "volmae-train", "--dataset-dir", str(task), "--out-dir", str(out), *TRAIN, *extra)


def rewrite(path, fn):
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(fn(np.asarray(img.dataobj).copy()), img.affine), str(path))
    return path


def put(arr, index, value):
    arr[index] = value
    return arr


def test_nan_voxels(capsys, task, tmp_path):
    bad = rewrite(task / "imagesTr" / "case_002.nii.gz", lambda a: put(a, (1, 1, 1), np.nan))
    rc, err = train(capsys, task, tmp_path / "o", "--epochs", "1")
    assert_clean_error(rc, err, "volmae-train", str(bad), "NaN")


def test_label_values_outside_the_classes(capsys, task, tmp_path):
    bad = rewrite(task / "labelsTr" / "case_003.nii.gz", lambda a: put(a, (0, 0, 0), 7))
    rc, err = train(capsys, task, tmp_path / "o", "--epochs", "1")
    assert_clean_error(rc, err, "volmae-train", str(bad), "[7]", "outside the declared classes 0..2")


def test_2d_and_5d_images(capsys, task, tmp_path):
    flat = task / "imagesTr" / "case_001.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((12, 14), np.float32), np.eye(4)), str(flat))
    rc, err = train(capsys, task, tmp_path / "o", "--epochs", "1")
    assert_clean_error(rc, err, "volmae-train", str(flat), "2 dimensions", "expected a 3D volume", one_line=False)
    five = task / "imagesTr" / "case_001.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((12, 14, 12, 2, 2), np.float32), np.eye(4)), str(five))
    rc, err = train(capsys, task, tmp_path / "o", "--epochs", "1")
    assert_clean_error(rc, err, "volmae-train", str(five), "5 dimensions", one_line=False)


def test_empty_datalist(capsys, task, tmp_path):
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"] = []
    (task / "dataset.json").write_text(json.dumps(meta))
    rc, err = train(capsys, task, tmp_path / "o", "--epochs", "1")
    assert_clean_error(rc, err, "volmae-train", "dataset.json", "empty")


def test_a_bad_case_found_mid_run_loses_nothing(capsys, task, tmp_path):
    out = tmp_path / "o"
    rc, err = train(capsys, task, out, "--epochs", "2", "--cache", "none")
    assert rc == 0, err
    before = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ("checkpoint.pt", "model.pt")}
    # the volume turns bad between runs; a longer resumed run meets it while loading its next batch
    bad = rewrite(task / "imagesTr" / "case_004.nii.gz", lambda a: put(a, (2, 2, 2), np.inf))
    rc, err = train(capsys, task, out, "--epochs", "3", "--cache", "none", "--resume")
    assert_clean_error(rc, err, "volmae-train", str(bad), "NaN/Inf")
    after = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ("checkpoint.pt", "model.pt")}
    assert after == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
