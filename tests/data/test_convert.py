"""BTCV and BraTS converters to the MSD layout: synthetic layouts for the rules, real files for the proof."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import save_nifti
from volmae.data.checks import preflight
from volmae.data.convert import (
    BRATS_LAYOUTS,
    BTCV_LABELS,
    BTCV_VALIDATION,
    TOTALSEG_TO_BTCV,
    convert_brats,
    convert_btcv,
    totalseg_to_btcv,
)
from volmae.data.datalist import load_msd_datalist, split_fold
from volmae.errors import DataError

SHAPE = (6, 7, 8)


def _btcv_tree(root: Path, numbers, test_numbers=(), shape=SHAPE) -> Path:
    rng = np.random.default_rng(0)
    for n in numbers:
        save_nifti(root / "RawData/Training/img" / f"img{n:04d}.nii.gz", rng.normal(0, 100, shape).astype(np.int16))
        save_nifti(root / "RawData/Training/label" / f"label{n:04d}.nii.gz", rng.integers(0, 14, shape, np.uint8))
    for n in test_numbers:
        save_nifti(root / "RawData/Testing/img" / f"img{n:04d}.nii.gz", rng.normal(0, 100, shape).astype(np.int16))
    return root


def test_btcv_standard_split_and_cv_folds(tmp_path):
    numbers = [1, 2, 3, 4, 5, 21, 22, *range(35, 41)]
    src = _btcv_tree(tmp_path / "btcv", numbers, test_numbers=[61, 62])
    meta = convert_btcv(src, tmp_path / "out")
    dl = load_msd_datalist(tmp_path / "out")
    assert meta["numTraining"] == len(dl.items) == 13 and meta["numTest"] == 2
    assert dl.num_classes == 14 and dl.labels[6] == "liver" and dl.modality == {0: "CT"}
    assert [u["case"] for u in dl.unlabeled] == ["img0061", "img0062"]
    train, val = split_fold(dl, 0)
    assert [v["case"] for v in val] == BTCV_VALIDATION and len(train) == 7
    assert sorted(c for f in dl.splits[1:] for c in f) == sorted(t["case"] for t in train)  # folds 1-4 cover the rest
    for it in dl.items:
        n = it["case"][3:]
        assert filecmp.cmp(it["image"], src / f"RawData/Training/img/img{n}.nii.gz", shallow=False)
        assert filecmp.cmp(it["label"], src / f"RawData/Training/label/label{n}.nii.gz", shallow=False)


def test_btcv_accepts_the_training_folder_itself(tmp_path):
    src = _btcv_tree(tmp_path / "btcv", [1, 2])
    meta = convert_btcv(src / "RawData" / "Training", tmp_path / "out")
    assert meta["numTraining"] == 2
    assert not (tmp_path / "out" / "splits.json").exists()  # no standard validation cases: the loader's own folds


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda s: (s / "RawData/Training/label/label0002.nii.gz").unlink(), "img0002.nii.gz has no label0002"),
        (
            lambda s: save_nifti(s / "RawData/Training/label/label0001.nii.gz", np.zeros((6, 7, 9), np.uint8)),
            r"label0001.nii.gz: label shape \(6, 7, 9\) does not match",
        ),
        (lambda s: (s / "RawData/Training/img/img0001.nii.gz").write_bytes(b"\x1f\x8b junk"), "not a readable NIfTI"),
        (lambda s: os.rename(s / "RawData/Training/label", s / "RawData/Training/labels"), "no BTCV 'RawData"),
    ],
)
def test_btcv_bad_input_named_and_nothing_written(tmp_path, damage, match):
    src = _btcv_tree(tmp_path / "btcv", [1, 2])
    damage(src)
    with pytest.raises(DataError, match=match):
        convert_btcv(src, tmp_path / "out")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_btcv_refuses_to_replace_existing_output(tmp_path):
    src = _btcv_tree(tmp_path / "btcv", [1, 2])
    convert_btcv(src, tmp_path / "out")
    before = (tmp_path / "out" / "dataset.json").read_text()
    with pytest.raises(DataError, match="already exist; pass overwrite=True"):
        convert_btcv(src, tmp_path / "out")
    assert (tmp_path / "out" / "dataset.json").read_text() == before
    convert_btcv(src, tmp_path / "out", overwrite=True)


def _brats_case(root: Path, layout: str, case: str, labels: np.ndarray | None, shape=SHAPE) -> list[np.ndarray]:
    """Write one case; channel k is the constant-offset image ``k * 10 + noise`` so the stacking order shows. A layout
    with a brain mask gets one covering all but the first slab (x = 0), and the channels returned are masked."""
    lay = BRATS_LAYOUTS[layout]
    rng = np.random.default_rng(len(case))
    chans = []
    brain = np.ones(shape, bool)
    if lay.brain_mask:
        brain[0] = False
        save_nifti(root / case / f"{case}{lay.brain_mask}.nii.gz", brain.astype(np.int32))
    for k, (_, suffix) in enumerate(lay.channels):
        arr = (k * 10 + rng.random(shape)).astype(np.float32)
        save_nifti(root / case / f"{case}{suffix}.nii.gz", arr)
        chans.append(np.where(brain, arr, 0.0))
    if labels is not None:
        save_nifti(root / case / f"{case}{lay.seg}.nii.gz", labels)
    return chans


def _labels(values) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    for i, v in enumerate(values):
        lab[i, :, :] = v
    return lab


@pytest.mark.parametrize(
    "layout, case, raw, msd",
    [
        ("brats2021", "BraTS2021_00001", [0, 1, 2, 4], [0, 2, 1, 3]),
        ("brats2023", "BraTS-GLI-00001-000", [0, 1, 2, 3], [0, 2, 1, 3]),
        ("brats2013-deepmedic", "brats_2013_pat0001_1", [0, 1, 2, 3, 4], [0, 2, 1, 2, 3]),
    ],
)
def test_brats_layouts_stack_channels_and_remap_labels(tmp_path, layout, case, raw, msd):
    chans = _brats_case(tmp_path / "src" / "train", layout, case, _labels(raw))
    _brats_case(tmp_path / "src" / "test", layout, "unlabeled_case", None)
    meta = convert_brats(tmp_path / "src", tmp_path / "out")  # layout detected from the file names
    assert meta["source_layout"] == layout and meta["numTraining"] == 1 and meta["numTest"] == 1
    dl = load_msd_datalist(tmp_path / "out")
    assert dl.in_channels == len(BRATS_LAYOUTS[layout].channels) == len(chans)
    preflight(dl.items, in_channels=dl.in_channels)
    img = nib.load(dl.items[0]["image"])
    assert img.shape == (*SHAPE, len(chans))
    np.testing.assert_allclose(np.asarray(img.dataobj), np.stack(chans, -1))
    lab = np.asarray(nib.load(dl.items[0]["label"]).dataobj)
    np.testing.assert_array_equal(lab, _labels(msd))
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["regions"] == {
        "TC": [2, 3],
        "WT": [1, 2, 3],
        "ET": [3],
    }


def test_brats_unknown_label_value_named(tmp_path):
    _brats_case(tmp_path / "src", "brats2021", "BraTS2021_00002", _labels([0, 3]))  # 3 does not exist in 2021
    with pytest.raises(DataError, match=r"BraTS2021_00002_seg.nii.gz: label values \[3\] are not in this BraTS"):
        convert_brats(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_brats_missing_modality_and_bad_grid_named(tmp_path):
    _brats_case(tmp_path / "a", "brats2021", "BraTS2021_00003", _labels([0, 1]))
    (tmp_path / "a" / "BraTS2021_00003" / "BraTS2021_00003_t2.nii.gz").unlink()
    with pytest.raises(DataError, match="BraTS2021_00003: no T2w file"):
        convert_brats(tmp_path / "a", tmp_path / "out")
    _brats_case(tmp_path / "b", "brats2021", "BraTS2021_00004", _labels([0, 1]))
    save_nifti(tmp_path / "b/BraTS2021_00004/BraTS2021_00004_t1.nii.gz", np.ones((6, 7, 9), np.float32))
    with pytest.raises(DataError, match="BraTS2021_00004_t1.nii.gz: channel file grid"):
        convert_brats(tmp_path / "b", tmp_path / "out")
    with pytest.raises(DataError, match="layout='brats1999'"):
        convert_brats(tmp_path / "b", tmp_path / "out", layout="brats1999")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no BraTS files recognised"):
        convert_brats(tmp_path / "empty", tmp_path / "out")


def test_brats_brain_mask_missing_or_off_grid_named(tmp_path):
    """The DeepMedic layout needs each case's brain mask (its background is a constant, not 0), on the images' grid."""
    case = "brats_2013_pat0009_1"
    _brats_case(tmp_path / "a", "brats2013-deepmedic", case, _labels([0, 2]))
    (tmp_path / "a" / case / f"{case}brainmask.nii.gz").unlink()
    with pytest.raises(DataError, match=f"{case}: no brainmask file"):
        convert_brats(tmp_path / "a", tmp_path / "out")
    save_nifti(tmp_path / "a" / case / f"{case}brainmask.nii.gz", np.ones((6, 7, 9), np.int32))
    with pytest.raises(DataError, match=r"brainmask.nii.gz: brain mask grid \(6, 7, 9\) does not match"):
        convert_brats(tmp_path / "a", tmp_path / "out")
    assert not (tmp_path / "out" / "dataset.json").exists()


@pytest.mark.realdata
def test_btcv_converter_on_real_ct(tmp_path, ircadb_ct):
    """The three real IRCADb CTs (BTCV numbering) laid out as a Synapse download: copied byte for byte, loadable,
    labels within the 13 organs, the standard validation case held out in fold 0."""
    names = sorted(p.name for p in (ircadb_ct / "imagesTr").iterdir())
    synapse = tmp_path / "Abdomen" / "RawData" / "Training"
    for n, name in zip((1, 2, 35), names):
        for kind, folder in (("img", "imagesTr"), ("label", "labelsTr")):
            (synapse / kind).mkdir(parents=True, exist_ok=True)
            os.symlink(ircadb_ct / folder / name, synapse / kind / f"{kind}{n:04d}.nii.gz")
    convert_btcv(tmp_path / "Abdomen", tmp_path / "btcv")
    dl = load_msd_datalist(tmp_path / "btcv")
    preflight(dl.items, in_channels=1)
    assert [v["case"] for v in split_fold(dl, 0)[1]] == ["img0035"]
    for it, name in zip(dl.items, names):
        assert filecmp.cmp(it["image"], ircadb_ct / "imagesTr" / name, shallow=False)
        lab = np.asarray(nib.load(it["label"]).dataobj)
        assert lab.max() <= 13 and (lab == 6).sum() > 100_000  # a real liver


@pytest.mark.realdata
def test_brats_converter_on_real_brats2013(tmp_path, brats2013):
    """One real BraTS 2013 case: FLAIR + T1c stacked, 0 outside the brain mask (DeepMedic left the air at a constant
    there) and unchanged inside, the 5 BraTS-2013 labels folded into MSD's 3 so that the standard regions keep their
    voxel counts (WT = 1-4, TC = 1, 3, 4, ET = 4)."""
    case = sorted((brats2013 / "train").iterdir())[0]
    (tmp_path / "src").mkdir()
    os.symlink(case, tmp_path / "src" / case.name)  # a symlinked case folder is followed
    convert_brats(tmp_path / "src", tmp_path / "out")
    dl = load_msd_datalist(tmp_path / "out")
    img = nib.load(dl.items[0]["image"])
    assert img.shape == (240, 240, 155, 2) and dl.modality == {0: "FLAIR", 1: "T1gd"}
    flair = np.asarray(nib.load(case / "Flair_subtrMeanDivStd.nii.gz").dataobj)
    brain = np.asarray(nib.load(case / "brainmask.nii.gz").dataobj) > 0
    assert np.unique(flair[~brain]).size == 1 and flair[~brain][0] < -3  # the constant this layout's mask undoes
    np.testing.assert_allclose(np.asarray(img.dataobj[..., 0]), np.where(brain, flair, 0.0))
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["background"].startswith("set to 0")
    raw = np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj).round()
    lab = np.asarray(nib.load(dl.items[0]["label"]).dataobj)
    assert np.array_equal(lab > 0, raw > 0)
    assert np.array_equal(np.isin(lab, [2, 3]), np.isin(raw, [1, 3, 4]))
    assert np.array_equal(lab == 3, raw == 4)
    np.testing.assert_allclose(img.affine, nib.load(case / "OTMultiClass.nii.gz").affine)


@pytest.mark.realdata
def test_totalsegmentator_classes_map_to_the_btcv_organs_of_their_names(totalseg_examples):
    """TotalSegmentator's example CT labels in BTCV numbering: each source class is the BTCV organ of the same name
    (the example ships TotalSegmentator's own label names), voxel for voxel, and every other structure becomes 0."""
    src = totalseg_examples
    names = json.loads((src / "label_map_total_and_total_mr.json").read_text())["total"]
    assert sorted(TOTALSEG_TO_BTCV.values()) == list(range(1, 14))
    for ts, btcv in TOTALSEG_TO_BTCV.items():
        assert set(names[str(ts)].split("_")) == set(BTCV_LABELS[btcv].split()), (ts, btcv)
    seg = np.asarray(nib.load(src / "example_seg.nii.gz").dataobj).round().astype(np.int64)
    mapped = totalseg_to_btcv(seg)
    assert mapped.dtype == np.uint8 and mapped.shape == seg.shape
    for ts, btcv in TOTALSEG_TO_BTCV.items():
        assert np.array_equal(mapped == btcv, seg == ts), names[str(ts)]
    assert (mapped[~np.isin(seg, list(TOTALSEG_TO_BTCV))] == 0).all() and (mapped == 6).sum() > 1000  # a liver
