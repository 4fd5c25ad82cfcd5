"""Preprocessing presets and the train / eval / pretrain / infer pipelines."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from volmae.data.datalist import load_msd_datalist
from volmae.data.transforms import (
    PREPROCESSING,
    Preprocessing,
    eval_transforms,
    get_preprocessing,
    infer_transforms,
    pretrain_transforms,
    train_transforms,
)
from volmae.errors import ConfigError

# --------------------------------------------------------------------------------------------------- presets


def test_presets():
    assert set(PREPROCESSING) == {"ct", "mri", "hippocampus"}
    h = get_preprocessing("hippocampus")
    assert (h.modality, h.roi_size, h.pixdim, h.flip_axes) == ("mri", (40, 56, 40), (1.0, 1.0, 1.0), (0,))
    assert get_preprocessing("ct").ct_window == (-175.0, 250.0)


def test_overrides_none_keep_preset_and_roi_becomes_int_tuple():
    assert get_preprocessing("mri", roi_size=None, num_samples=None) is PREPROCESSING["mri"]
    p = get_preprocessing("hippocampus", roi_size=[32.0, 48, 32], num_samples=4)
    assert p.roi_size == (32, 48, 32) and all(type(r) is int for r in p.roi_size) and p.num_samples == 4
    assert PREPROCESSING["hippocampus"].roi_size == (40, 56, 40)  # the preset itself is unchanged


def test_pixdim_override_becomes_float_tuple():
    p = get_preprocessing("mri", pixdim=[2, 2, 3], roi_size=None)
    assert p.pixdim == (2.0, 2.0, 3.0) and all(type(v) is float for v in p.pixdim)
    assert get_preprocessing("mri", pixdim=None).pixdim == (1.0, 1.0, 1.0)
    assert PREPROCESSING["mri"].pixdim == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("name", ["CT", "brain", "", "hippocampus "])
def test_unknown_preset(name):
    with pytest.raises(ConfigError, match="unknown preprocessing preset") as info:
        get_preprocessing(name)
    assert repr(name) in str(info.value) and "hippocampus" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"roi_size": (0, 32, 32)}, "roi_size"),
        ({"roi_size": (32, 32)}, "roi_size"),
        ({"roi_size": (32, 32, 32, 1)}, "roi_size"),
        ({"roi_size": (32, -8, 32)}, "roi_size"),
        ({"pixdim": (1.0, 0.0, 1.0)}, "pixdim"),
        ({"pixdim": (1.0, 1.0)}, "pixdim"),
        ({"pixdim": 2.0}, r"pixdim=2.0: expected three values"),
        ({"roi_size": 32}, r"roi_size=32: expected three values"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_overrides(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        get_preprocessing("hippocampus", **kwargs)


def test_bad_modality():
    with pytest.raises(ConfigError, match="modality='pet'"):
        Preprocessing("pet", (8, 8, 8))


# --------------------------------------------------------------------------------------------------- synthetic


def _save(path, arr, aff):
    nib.save(nib.Nifti1Image(arr, aff), str(path))
    return str(path)


def test_ct_window_maps_hu_to_unit_range_and_crops_body(tmp_path):
    rng = np.random.default_rng(0)
    aff = np.diag([1.5, 1.5, 2.0, 1.0])  # already on the preset's grid: no interpolation
    hu = np.full((20, 20, 20), -1000.0, np.float32)  # air
    body = rng.uniform(-170, 1200, (12, 12, 12)).astype(np.float32)
    body[0, 0, 0], body[1, 0, 0], body[2, 0, 0], body[3, 0, 0] = 250.0, 37.5, -100.0, 3000.0
    body[5, 5, 5] = -500.0  # below the window inside the body: clipped to 0, still inside the crop box
    hu[4:16, 4:16, 4:16] = body
    lab = np.zeros(hu.shape, np.uint8)
    lab[6:10, 6:10, 6:10] = 1
    item = {"image": _save(tmp_path / "ct.nii.gz", hu, aff), "label": _save(tmp_path / "ctl.nii.gz", lab, aff)}
    out = eval_transforms(get_preprocessing("ct"), num_classes=2)(item)
    img = out["image"]
    assert tuple(img.shape) == (1, 12, 12, 12)  # cropped to the voxels above the window floor
    assert tuple(out["label"].shape) == (1, 12, 12, 12) and int(out["label"].sum()) == 64
    expected = np.clip((body + 175.0) / 425.0, 0.0, 1.0)
    np.testing.assert_allclose(img[0].numpy(), expected, atol=1e-4)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    got = img[0].numpy()
    assert got[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    assert got[1, 0, 0] == pytest.approx(0.5, abs=1e-5)
    assert got[2, 0, 0] == pytest.approx(75.0 / 425.0, abs=1e-5)
    assert got[3, 0, 0] == pytest.approx(1.0, abs=1e-6) and got[5, 5, 5] == pytest.approx(0.0, abs=1e-6)


def test_ct_resamples_to_preset_spacing(tmp_path):
    hu = np.full((30, 30, 20), 40.0, np.float32)
    hu[::2] = 60.0
    out = infer_transforms(get_preprocessing("ct"))({"image": _save(tmp_path / "ct1mm.nii.gz", hu, np.eye(4))})
    assert tuple(out["image"].shape[1:]) == (20, 20, 10)  # 30 mm / 1.5 mm, 20 mm / 2 mm
    np.testing.assert_allclose(np.asarray(out["image"].pixdim[:3]), [1.5, 1.5, 2.0], atol=1e-6)


def test_mri_normalisation_zero_mean_unit_std_foreground(tmp_path):
    rng = np.random.default_rng(1)
    img = np.zeros((24, 24, 24), np.float32)
    img[4:20, 4:20, 4:20] = rng.normal(500, 100, (16, 16, 16)).clip(1)
    img[10, 10, 10] = 1e6  # an outlier: clipped at the 99.5th percentile before the z-score
    out = infer_transforms(get_preprocessing("mri"))({"image": _save(tmp_path / "mr.nii.gz", img, np.eye(4))})
    x = out["image"][0]
    fg = torch.from_numpy(img > 0)
    assert tuple(x.shape) == (24, 24, 24)
    assert float(x[fg].mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(x[fg].std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    assert bool((x[~fg] == 0).all())  # background untouched
    assert float(x.max()) < 5.0  # the outlier did not survive


def test_mri_normalisation_per_volume_scale_invariant(tmp_path):
    rng = np.random.default_rng(2)
    base = np.zeros((16, 16, 16), np.float32)
    base[3:13, 3:13, 3:13] = rng.uniform(10, 100, (10, 10, 10))
    t = infer_transforms(get_preprocessing("mri"))
    a = t({"image": _save(tmp_path / "a.nii.gz", base, np.eye(4))})["image"]
    b = t({"image": _save(tmp_path / "b.nii.gz", base * 1000.0, np.eye(4))})["image"]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_synthetic_train_crops_and_determinism(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.normal(100, 10, (20, 22, 18)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[5:9, 5:9, 5:9], lab[12:15, 12:16, 10:14] = 1, 2
    item = {
        "image": _save(tmp_path / "i.nii.gz", img, np.eye(4)),
        "label": _save(tmp_path / "l.nii.gz", lab, np.eye(4)),
    }
    p = Preprocessing("mri", (8, 8, 8), pixdim=None, num_samples=5)
    t = train_transforms(p, 3)
    t.set_random_state(seed=0)
    first = t(item)
    t.set_random_state(seed=0)
    again = t(item)
    assert len(first) == 5
    for a, b in zip(first, again):
        assert tuple(a["image"].shape) == (1, 8, 8, 8) == tuple(a["label"].shape)
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())
        assert set(torch.unique(a["label"]).tolist()) <= {0.0, 1.0, 2.0}
    # positive samples are centred on a labelled voxel: with pos=1 only, every crop holds foreground
    only_pos = train_transforms(Preprocessing("mri", (8, 8, 8), pixdim=None, num_samples=6, neg=0.0), 3)(item)
    assert all(float(c["label"].max()) > 0 for c in only_pos)


def test_train_label_outside_classes_is_refused(tmp_path):
    img = np.random.default_rng(4).normal(size=(10, 10, 10)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[2:4, 2:4, 2:4] = 3
    item = {
        "image": _save(tmp_path / "i.nii.gz", img, np.eye(4)),
        "label": _save(tmp_path / "l.nii.gz", lab, np.eye(4)),
    }
    with pytest.raises(RuntimeError) as info:
        train_transforms(Preprocessing("mri", (8, 8, 8), pixdim=None), 3)(item)
    cause = info.value.__cause__
    assert cause is not None and "outside the declared classes" in str(cause) and item["label"] in str(cause)


# --------------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def hippo_items(msd_hippocampus):
    return load_msd_datalist(msd_hippocampus).items


@pytest.mark.realdata
def test_hippocampus_train_transforms(hippo_items):
    item = hippo_items[0]
    p = get_preprocessing("hippocampus")
    raw = np.asarray(nib.load(item["label"]).dataobj)
    t = train_transforms(p, 3)
    t.set_random_state(seed=1)
    crops = t(item)
    assert isinstance(crops, list) and len(crops) == p.num_samples
    for c in crops:
        assert tuple(c["image"].shape) == (1, *p.roi_size) == tuple(c["label"].shape)
        assert c["image"].dtype == torch.float32
        assert set(torch.unique(c["label"]).tolist()) == {0.0, 1.0, 2.0}
        # this case (35 x 51 x 35) fits in the ROI: the padded crop holds every labelled voxel
        for k in (1, 2):
            assert int((c["label"] == k).sum()) == int((raw == k).sum())


@pytest.mark.realdata
def test_hippocampus_eval_transforms_keep_whole_volume(hippo_items):
    p = get_preprocessing("hippocampus")
    for item in hippo_items[:3]:
        raw_img, raw_lab = nib.load(item["image"]), np.asarray(nib.load(item["label"]).dataobj)
        out = eval_transforms(p, 3)(item)
        assert tuple(out["image"].shape) == (1, *raw_img.shape)
        assert tuple(out["label"].shape) == (1, *raw_img.shape)
        np.testing.assert_allclose(np.asarray(out["image"].affine), raw_img.affine, atol=1e-5)
        np.testing.assert_array_equal(out["label"][0].numpy(), np.rint(raw_lab))
        x = out["image"][0]
        nz = x != 0
        assert float(nz.float().mean()) > 0.5
        assert float(x[nz].mean()) == pytest.approx(0.0, abs=1e-3)
        assert float(x[nz].std(unbiased=False)) == pytest.approx(1.0, abs=1e-2)


@pytest.mark.realdata
def test_hippocampus_pretrain_and_infer_transforms(hippo_items):
    p = get_preprocessing("hippocampus", roi_size=(16, 24, 16), num_samples=3)
    crops = pretrain_transforms(p)({"image": hippo_items[1]["image"]})
    assert len(crops) == 3
    assert all(tuple(c["image"].shape) == (1, 16, 24, 16) and "label" not in c for c in crops)
    out = infer_transforms(p)({"image": hippo_items[1]["image"]})
    assert tuple(out["image"].shape[1:]) == nib.load(hippo_items[1]["image"]).shape


@pytest.mark.realdata
def test_ct_preset_on_real_abdominal_ct():
    """ircadb01 CT (0.57 mm, LPS-stored DICOM-derived NIfTI): RAS, 1.5 x 1.5 x 2 mm, HU window, BTCV labels kept."""
    from tests.conftest import require_dataset

    root = require_dataset("ircadb01_ct")
    item = {
        "image": str(root / "imagesTr" / "ircadb_001.nii.gz"),
        "label": str(root / "labelsTr" / "ircadb_001.nii.gz"),
    }
    out = eval_transforms(get_preprocessing("ct"), num_classes=14)(item)
    img, lab = out["image"], out["label"]
    assert img.shape[0] == 1 and img.shape[1:] == lab.shape[1:]
    assert np.allclose(np.linalg.norm(img.affine[:3, :3].numpy(), axis=0), (1.5, 1.5, 2.0), atol=1e-3)
    assert np.all(np.diag(img.affine[:3, :3].numpy()) > 0)  # RAS
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert set(torch.unique(lab).tolist()) == {0, 1, 2, 3, 6, 8, 9, 10}  # PROVENANCE.md: labels present
    # the liver (6) keeps its physical volume through resampling (within 3%)
    raw = nib.load(item["label"])
    raw_ml = (np.asarray(raw.dataobj) == 6).sum() * np.prod(raw.header.get_zooms()) / 1000
    new_ml = float((lab == 6).sum()) * 1.5 * 1.5 * 2.0 / 1000
    assert abs(new_ml - raw_ml) / raw_ml < 0.03
