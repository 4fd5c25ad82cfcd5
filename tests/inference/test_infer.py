"""volmae-infer's API and console script: outputs in the input's space, naming, refusals, real DICOM / NIfTI."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.cli.conftest import assert_clean_error
from tests.conftest import model_file
from tests.inference.test_dicom_seg import copy_series, seg_on_grid
from volmae.artifact import ModelArtifact, Provenance, Task
from volmae.cli.infer import main as infer_main
from volmae.data.transforms import get_preprocessing
from volmae.errors import ConfigError, DataError
from volmae.inference.infer import InferConfig, collect_inputs, infer
from volmae.networks.registry import build_mae, build_unetr

SMALL = dict(hidden_size=24, mlp_dim=48, num_layers=3, num_heads=2)
LPS = np.array([[-0.8, 0, 0, 120.0], [0, -0.8, 0, 95.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
LABELS = {0: "background", 1: "left hippocampus", 2: "right/other"}


def model_checkpoint(path: Path, preprocessing="mri", roi=(16, 16, 16), in_channels=1) -> Path:
    torch.manual_seed(0)
    prep = get_preprocessing(preprocessing, roi_size=roi)
    net, config = build_unetr("vit-tiny", in_channels, 3, roi, 8, 4, **SMALL)
    task = Task(prep, in_channels, LABELS, dataset="test")
    ModelArtifact.from_network(net, config, task, Provenance.now("test")).save(path)
    return path


def scan(path: Path, shape=(30, 26, 11), affine=LPS, channels: int | None = None) -> Path:
    rng = np.random.default_rng(len(str(path)))
    arr = rng.normal(100, 20, shape if channels is None else (*shape, channels)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    return model_checkpoint(tmp_path / "model.pt")


def test_one_scan_default_output_in_its_own_space(tmp_path, model, monkeypatch):
    src = scan(tmp_path / "in" / "patient 7.nii.gz")
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    (done,) = infer(InferConfig([str(src)], str(model), per_class=True, save_probabilities=True, quiet=True))
    assert done.label_map == tmp_path / "patient_7_seg.nii.gz"
    out = nib.load(done.label_map)
    assert out.shape == (30, 26, 11) and np.allclose(out.affine, LPS, atol=1e-4)
    assert out.get_data_dtype() == np.uint8
    seg = np.asarray(out.dataobj)
    masks = sorted((tmp_path / "patient_7_seg_classes").iterdir())
    assert [m.name for m in masks] == ["left_hippocampus.nii.gz", "right_other.nii.gz"]
    assert np.array_equal(np.asarray(nib.load(masks[0]).dataobj), (seg == 1).astype(np.uint8))
    probs = nib.load(tmp_path / "patient_7_seg_probabilities.nii.gz")
    assert probs.shape[-1] == 3 and np.allclose(np.asarray(probs.dataobj).sum(-1), 1, atol=1e-4)
    assert done.voxels_per_class == {n: int((seg == k).sum()) for k, n in LABELS.items() if k}
    assert src.read_bytes() == before  # the input is only read


def test_phase_timings_and_the_logits_route_gives_the_probability_route_labels(tmp_path, model):
    src = scan(tmp_path / "in" / "a.nii.gz")
    (fast,) = infer(InferConfig([str(src)], str(model), output=str(tmp_path / "fast.nii.gz"), quiet=True))
    (slow,) = infer(
        InferConfig([str(src)], str(model), output=str(tmp_path / "slow.nii.gz"), save_probabilities=True, quiet=True)
    )
    assert np.array_equal(np.asarray(nib.load(fast.label_map).dataobj), np.asarray(nib.load(slow.label_map).dataobj))
    phases = ["load", "preprocess", "network", "postprocess", "stitch", "invert", "save"]
    assert sorted(fast.timings) == sorted(phases)
    assert all(v >= 0 for v in fast.timings.values()) and fast.timings["network"] > 0


def test_non_orthogonal_affine_comes_back_on_its_own_grid(tmp_path, model):
    """A sheared (non-orthogonal) affine is a valid NIfTI grid: segmented, and the label map is on exactly that grid."""
    sheared = np.array([[0.9, 0.3, 0, 10.0], [0.0, 1.1, 0.2, -5.0], [0.1, 0, 2.0, 3.0], [0, 0, 0, 1]])
    src = scan(tmp_path / "sheared.nii.gz", affine=sheared)
    (done,) = infer(InferConfig([str(src)], str(model), output=str(tmp_path / "seg.nii.gz"), quiet=True))
    out = nib.load(done.label_map)
    assert out.shape == (30, 26, 11) and np.allclose(out.affine, sheared, atol=1e-4)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2}


def test_folder_in_folder_out_and_the_overwrite_rule(tmp_path, model):
    for name in ("a.nii.gz", "b.nii"):
        scan(tmp_path / "scans" / name)
    (tmp_path / "scans" / "notes.txt").write_text("ignored")
    cfg = InferConfig([str(tmp_path / "scans")], str(model), output=str(tmp_path / "out"), quiet=True)
    done = infer(cfg)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    stamp = [d.label_map.stat().st_mtime_ns for d in done]
    with pytest.raises(ConfigError, match="already exist; pass --overwrite"):
        infer(cfg)
    assert [d.label_map.stat().st_mtime_ns for d in done] == stamp
    cfg.overwrite = True
    assert len(infer(cfg)) == 2


def test_explicit_file_output_and_regridded_window(tmp_path, model):
    src = scan(tmp_path / "s.nii.gz")
    cfg = InferConfig([str(src)], str(model), output=str(tmp_path / "x" / "seg.nii.gz"), roi_size=(24, 16, 16))
    (done,) = infer(cfg)
    assert nib.load(done.label_map).shape == (30, 26, 11)


def _bad_input(d: Path, kind: str) -> list[str]:
    if kind == "missing":
        return [str(d / "missing.nii.gz")]
    if kind == "text":
        (d / "m.txt").write_text("x")
        return [str(d / "m.txt")]
    if kind == "empty folder":
        (d / "empty").mkdir()
        return [str(d / "empty")]
    if kind == "2d":
        return [str(scan(d / "flat.nii.gz", shape=(30, 26, 1)))]
    if kind == "channels":
        return [str(scan(d / "two.nii.gz", channels=2))]
    if kind == "same case":
        return [str(scan(d / "a" / "x.nii.gz")), str(scan(d / "b" / "x.nii"))]
    return []


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", "missing.nii.gz: input not found"),
        ("text", "m.txt: unsupported input"),
        ("empty folder", "empty: no NIfTI files or DICOM series"),
        ("2d", "flat.nii.gz: image shape (30, 26, 1) is not a 3D volume"),
        ("channels", "two.nii.gz: has 2 channel(s), the task expects 1"),
        ("same case", "would both be written as case 'x'"),
        ("none", "no input given"),
    ],
)
def test_bad_inputs_are_named_and_nothing_written(tmp_path, model, kind, match):
    d = tmp_path / "inputs"
    d.mkdir()
    with pytest.raises(DataError, match=re.escape(match)):
        infer(InferConfig(_bad_input(d, kind), str(model), output=str(tmp_path / "out"), quiet=True))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_batch_goes_on_past_bad_scans(tmp_path, model, capsys):
    d = tmp_path / "scans"
    good = [scan(d / f"good{i}.nii.gz") for i in range(2)]
    scan(d / "flat.nii.gz", shape=(30, 26, 1))
    whole = scan(tmp_path / "whole.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (d / "empty.nii.gz").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    out = tmp_path / "out"
    done = infer(InferConfig([str(d)], str(model), output=str(out), per_class=True))
    status = {c.case: c.status for c in done}
    assert status == {"empty": "failed", "flat": "failed", "good0": "ok", "good1": "ok", "truncated": "failed"}
    errors = {c.case: c.error for c in done if c.status == "failed"}
    assert "not a 3D volume" in errors["flat"] and "truncated.nii.gz" in errors["truncated"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good0.nii.gz", "good1.nii.gz"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["good0_classes", "good1_classes"]
    assert all(c.rss_gib > 0 for c in done)
    table = capsys.readouterr().out
    assert "2 of 5 scan(s) segmented, 3 failed" in table and "good1 | ok" in table
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before and len(good) == 2  # inputs only read
    rc = infer_main([str(d), "--model", str(model), "-o", str(tmp_path / "out2"), "-q"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", "3 of 5 scan(s) failed (the others were written)")
    assert (tmp_path / "out2" / "good0.nii.gz").is_file()


def test_output_refusals(tmp_path, model):
    a, b = scan(tmp_path / "a.nii.gz"), scan(tmp_path / "b.nii.gz")
    with pytest.raises(ConfigError, match="is one file but there are 2 scans"):
        infer(InferConfig([str(a), str(b)], str(model), output=str(tmp_path / "o.nii.gz")))
    with pytest.raises(ConfigError, match="would replace an input"):
        infer(InferConfig([str(a)], str(model), output=str(a), overwrite=True))
    with pytest.raises(ConfigError, match="cannot create the output folder"):
        infer(InferConfig([str(a)], str(model), output=str(tmp_path / "a.nii.gz" / "sub" / "o.nii.gz")))


def test_dicom_seg_without_highdicom_is_refused_first(tmp_path, capsys, monkeypatch):
    """highdicom is an optional extra: without it, --output-type dicom_seg stops with one line saying how to install
    it, before the inputs or the model are looked at and before anything is written."""
    missing, out = tmp_path / "no such series", tmp_path / "out"
    args = [str(missing), "--model", str(tmp_path / "nope.pt"), "-o", str(out), "--output-type", "nifti", "dicom_seg"]
    assert_clean_error(infer_main(args), capsys.readouterr().err, "volmae-infer", "no such series")  # highdicom here
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    err = assert_clean_error(infer_main(args), capsys.readouterr().err, "volmae-infer", "needs highdicom")
    assert 'pip install "volmae[dicom]"' in err and "no such series" not in err
    with pytest.raises(
        ConfigError, match=re.escape('--output-type dicom_seg needs highdicom: pip install "volmae[dicom]"')
    ):
        infer(InferConfig([str(missing)], str(tmp_path / "nope.pt"), output=str(out), output_type=["dicom_seg"]))
    assert not out.exists()


def test_console_script(tmp_path, model, capsys, monkeypatch):
    src = scan(tmp_path / "case.nii.gz")
    monkeypatch.chdir(tmp_path)
    assert infer_main(["--list-classes", "--model", str(model)]) == 0
    assert "1  left hippocampus" in capsys.readouterr().out
    assert infer_main([str(src), "--model", str(model), "--tta-flips", "0", "--no-amp"]) == 0
    assert (tmp_path / "case_seg.nii.gz").is_file()
    assert "1 scan(s) segmented" in capsys.readouterr().out
    rc = infer_main([str(src), "--model", str(model), "-q"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", "already exist; pass --overwrite")
    rc = infer_main([str(src), "--model", str(tmp_path / "nope.pt"), "-o", "out"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", "model file not found")
    mae = model_file(build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1), tmp_path / "mae.pt")
    rc = infer_main([str(src), "--model", str(mae), "-o", "out"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", "a mae pretraining model, not a segmentation")


@pytest.mark.realdata
def test_real_dicom_series_and_nifti(tmp_path, dicom_crops, msd_hippocampus):
    """A real DICOM study folder and a real MSD NIfTI (uint8 or float32 on disk) come back on their own grids."""
    model = model_checkpoint(tmp_path / "model.pt", "hippocampus", roi=(40, 56, 40))
    study = sorted(p for p in dicom_crops.iterdir() if p.is_dir())[0]
    nifti = msd_hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    done = infer(InferConfig([str(study), str(nifti)], str(model), output=str(tmp_path / "out"), quiet=True))
    assert [d.case for d in done] == [study.name, "hippocampus_001"]
    ref = nib.load(nifti)
    out = nib.load(done[1].label_map)
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine, atol=1e-4)
    from volmae.data.readers import read_dicom_series

    dcm = read_dicom_series(study)
    out = nib.load(done[0].label_map)
    assert out.shape == dcm.shape[:3] and np.allclose(out.affine, dcm.affine, atol=1e-3)
    assert collect_inputs([str(dicom_crops)])[0][1] == str(study)  # a folder of studies: one case per series
    assert os.path.basename(done[0].label_map) == f"{study.name}.nii.gz"


@pytest.mark.realdata
def test_folder_with_two_dicom_series_is_refused(tmp_path, two_series_folder):
    model = model_checkpoint(tmp_path / "model.pt", "hippocampus", roi=(40, 56, 40))
    with pytest.raises(DataError, match="mixed: holds 2 DICOM series; pass the folder of one series"):
        infer(InferConfig([str(two_series_folder)], str(model), output=str(tmp_path / "out"), quiet=True))
    assert not (tmp_path / "out").exists()


@pytest.mark.realdata
def test_fifty_scans_with_a_bad_one_and_flat_memory(tmp_path, dicom_crops, msd_hippocampus):
    """50 scans (real MSD NIfTI, real DICOM series, synthetic, one corrupt): a status per scan, the run goes on past
    the bad one, and resident memory does not grow from scan to scan."""
    model = model_checkpoint(tmp_path / "model.pt", "hippocampus", roi=(40, 56, 40))
    d = tmp_path / "scans"
    d.mkdir()
    studies = sorted(p for p in dicom_crops.iterdir() if p.is_dir())
    for src in sorted((msd_hippocampus / "imagesTr").glob("hippocampus_*.nii.gz"))[:36]:
        (d / src.name).symlink_to(src)
    for i in range(10):
        scan(d / f"synthetic_{i:02d}.nii.gz", shape=(36 + i, 50, 35), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    (d / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    inputs = [str(d), *map(str, studies)]
    done = infer(InferConfig(inputs, str(model), output=str(tmp_path / "out"), quiet=True))
    assert len(done) == 50
    assert [c.case for c in done if c.status != "ok"] == ["corrupt"]
    assert "corrupt.nii.gz" in next(c.error for c in done if c.status != "ok")
    assert sum(1 for p in (tmp_path / "out").glob("*.nii.gz")) == 49
    rss = [c.rss_gib for c in done]
    assert max(rss[25:]) - max(rss[:25]) < 0.1, f"RSS grew from scan to scan: {[round(r, 3) for r in rss]}"


def _hippocampus_series(dicom_crops: Path, study: str = "Study2") -> Path:
    return next(p for p in (dicom_crops / study).iterdir() if p.is_dir())


@pytest.mark.realdata
def test_dicom_seg_and_statistics_beside_the_nifti_label_map(tmp_path, dicom_crops):
    """A real DICOM series -> NIfTI label map, DICOM-SEG and statistics in one run: the SEG read back with highdicom
    equals the NIfTI voxel for voxel, and each class's volume is its voxel count x the NIfTI's voxel volume."""
    import highdicom as hd

    import volmae

    model = model_checkpoint(tmp_path / "model.pt", "hippocampus", roi=(40, 56, 40))
    series, out = _hippocampus_series(dicom_crops), tmp_path / "out"
    cfg = InferConfig(
        [str(series)], str(model), output=str(out), output_type=["nifti", "dicom_seg"], statistics=True, quiet=True
    )
    (done,) = infer(cfg)
    case = series.name
    assert done.label_map == out / f"{case}.nii.gz"
    assert done.extra == [out / f"{case}.dcm", out / f"{case}_statistics.json"]
    img = nib.load(done.label_map)
    seg = np.asarray(img.dataobj)
    assert len(np.unique(seg)) > 1
    assert np.array_equal(seg_on_grid(out / f"{case}.dcm", seg.shape, img.affine, LABELS), seg)
    dcm = hd.seg.segread(out / f"{case}.dcm")
    assert [s.SegmentLabel for s in dcm.SegmentSequence] == ["left hippocampus", "right/other"]
    assert dcm.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmSource == "model.pt (unetr)"

    stats = json.loads((out / f"{case}_statistics.json").read_text())
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    assert [(c["name"], c["label"]) for c in stats["classes"]] == [("left hippocampus", 1), ("right/other", 2)]
    for c in stats["classes"]:
        assert c["voxels"] == int((seg == c["label"]).sum()) == done.voxels_per_class[c["name"]]
        assert c["volume_ml"] == pytest.approx(c["voxels"] * voxel_ml, rel=1e-12)
    assert stats["input"]["path"] == str(series) and stats["input"]["shape"] == list(seg.shape)
    assert stats["input"]["spacing_mm"] == pytest.approx(list(img.header.get_zooms()[:3]))
    assert stats["model"] == {
        "source": str(model),
        "bundle": None,
        "kind": "unetr",
        "preset": "vit-tiny",
        "dataset": "test",
    }
    assert stats["settings"]["roi_size"] == [40, 56, 40] and stats["settings"]["tta_flips"] == []
    assert {"overlap", "device", "amp", "cpu_bf16"} <= set(stats["settings"]) and stats[
        "volmae_version"
    ] == volmae.__version__
    assert stats["outputs"] == [str(out / f"{case}.nii.gz"), str(out / f"{case}.dcm")]


@pytest.mark.realdata
def test_dicom_seg_refusals(tmp_path, dicom_crops):
    model = model_checkpoint(tmp_path / "model.pt", "hippocampus", roi=(40, 56, 40))
    nifti, out = scan(tmp_path / "t1.nii.gz"), tmp_path / "out"
    with pytest.raises(ConfigError, match=re.escape("t1.nii.gz: output_type dicom_seg needs DICOM series inputs")):
        infer(InferConfig([str(nifti)], str(model), output=str(out), output_type=["nifti", "dicom_seg"]))
    with pytest.raises(ConfigError, match=re.escape("output_type='png': expected nifti and / or dicom_seg")):
        infer(InferConfig([str(nifti)], str(model), output=str(out), output_type=["nifti", "png"]))
    with pytest.raises(ConfigError, match=re.escape("names a DICOM-SEG file: add dicom_seg to the output types")):
        infer(InferConfig([str(nifti)], str(model), output=str(tmp_path / "seg.dcm")))
    series = copy_series(_hippocampus_series(dicom_crops, "Study1"), tmp_path / "series")
    with pytest.raises(ConfigError, match="would be read as another series there; choose another output folder"):
        infer(InferConfig([str(series)], str(model), output=str(series), output_type=["dicom_seg"]))
    assert not out.exists() and sorted(p.suffix for p in series.iterdir()) == [".dcm"] * 32

    def no_frame_of_reference(ds, i):
        del ds.FrameOfReferenceUID

    bad = copy_series(_hippocampus_series(dicom_crops, "Study1"), tmp_path / "bad", no_frame_of_reference)
    cfg = InferConfig([str(bad)], str(model), output=str(out), output_type=["nifti", "dicom_seg"], quiet=True)
    with pytest.raises(
        DataError, match=re.escape("bad: cannot write a DICOM-SEG, the series lacks FrameOfReferenceUID")
    ):
        infer(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["bad.nii.gz"]  # the label map is written before the SEG
    assert nib.load(out / "bad.nii.gz").shape == (35, 51, 32)


@pytest.mark.realdata
def test_console_script_output_types_and_statistics(tmp_path, dicom_crops, capsys):
    """The flags, a SEG-only run to a named .dcm, and a batch in which one series cannot take a SEG: it fails alone
    and nothing of it stays written."""
    model = str(model_checkpoint(tmp_path / "model.pt", "hippocampus", roi=(40, 56, 40)))
    good = _hippocampus_series(dicom_crops, "Study1")
    rc = infer_main(
        [str(good), "--model", model, "-o", str(tmp_path / "one" / "seg.dcm"), "--output-type", "dicom_seg"]
    )
    assert rc == 0 and sorted(p.name for p in (tmp_path / "one").iterdir()) == ["seg.dcm"]
    assert "seg.dcm (35, 51, 32)" in capsys.readouterr().out
    rc = infer_main([str(good), "--model", model, "-o", str(tmp_path / "x"), "--output-type", "nifti", "dicom-segg"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", "output_type='dicom-segg': expected nifti and / or")

    batch = tmp_path / "studies"
    copy_series(good, batch / "good")

    def no_study(ds, i):
        del ds.StudyInstanceUID

    copy_series(good, batch / "bad", no_study)
    args = [str(batch), "--model", model, "-o", str(tmp_path / "out"), "--output-type", "nifti", "dicom_seg"]
    rc = infer_main([*args, "--statistics", "--per-class", "-q"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", "1 of 2 scan(s) failed", "lacks StudyInstanceUID")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["good.dcm", "good.nii.gz", "good_classes", "good_statistics.json"]
