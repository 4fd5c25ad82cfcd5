"""preflight (header-level) and CheckVolumed (voxel-level) input checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from volmae.data.checks import CheckVolumed, check_image_array, check_label_array, preflight
from volmae.data.readers import LoadVolumed
from volmae.errors import DataError

SHAPE = (8, 9, 10)


@pytest.fixture
def case(write_nifti):
    """``case(image=array|None, label=array|None, image_affine=..., label_affine=...)`` -> a datalist item."""

    def make(image=None, label=None, image_affine=None, label_affine=None, name="c"):
        rng = np.random.default_rng(0)
        img = rng.normal(50, 10, SHAPE).astype(np.float32) if image is None else image
        lab = np.zeros(SHAPE, np.uint8) if label is None else label
        if label is None:
            lab[2:5, 2:5, 2:5] = 1
        item = {"image": str(write_nifti(f"{name}_img.nii.gz", img, image_affine)), "case": name}
        if label is not False:
            item["label"] = str(write_nifti(f"{name}_lab.nii.gz", lab, label_affine))
        return item

    return make


def _preflight_error(items, **kw) -> str:
    with pytest.raises(DataError) as info:
        preflight(items, **kw)
    return str(info.value)


# --------------------------------------------------------------------------------------------------- preflight


def test_good_items_pass(case):
    items = [case(name="a"), case(name="b")]
    assert preflight(items, in_channels=1) is None
    # trailing singleton axes (x y z 1) are fine for images and labels
    assert (
        preflight([case(image=np.ones((*SHAPE, 1), np.float32) + np.arange(10), label=np.zeros((*SHAPE, 1)))]) is None
    )


def test_empty_datalist():
    assert "empty" in _preflight_error([], what="training datalist")
    assert "training datalist" in _preflight_error([], what="training datalist")


def test_missing_image_file(case, tmp_path):
    item = case()
    item["image"] = str(tmp_path / "gone.nii.gz")
    msg = _preflight_error([item])
    assert str(tmp_path / "gone.nii.gz") in msg and "file not found" in msg


def test_missing_label_file(case, tmp_path):
    item = case()
    item["label"] = str(tmp_path / "gone_label.nii.gz")
    msg = _preflight_error([item])
    assert str(tmp_path / "gone_label.nii.gz") in msg and "not found" in msg


def test_item_without_image_key():
    assert "no 'image' key" in _preflight_error([{"label": "x.nii.gz"}])


def test_2d_image(case):
    item = case(image=np.random.default_rng(0).normal(size=(8, 9)).astype(np.float32), label=np.zeros((8, 9)))
    msg = _preflight_error([item])
    assert item["image"] in msg and "3D" in msg


def test_flat_3d_image(case):
    item = case(image=np.random.default_rng(0).normal(size=(8, 9, 1)).astype(np.float32), label=False)
    msg = _preflight_error([item], need_label=False)
    assert item["image"] in msg and "not a 3D volume" in msg


def test_5d_image(case):
    item = case(image=np.random.default_rng(0).normal(size=(*SHAPE, 2, 2)).astype(np.float32))
    msg = _preflight_error([item])
    assert item["image"] in msg and "5 dimensions" in msg


def test_image_label_shape_mismatch(case):
    item = case(label=np.zeros((8, 9, 11), np.uint8))
    msg = _preflight_error([item])
    assert item["label"] in msg and "does not match" in msg


def test_4d_label_is_refused(case):
    item = case(label=np.zeros((*SHAPE, 2), np.uint8))
    msg = _preflight_error([item])
    assert item["label"] in msg and "does not match" in msg


def test_image_label_affine_mismatch(case):
    shifted = np.eye(4)
    shifted[0, 3] = 1.0
    item = case(label_affine=shifted)
    msg = _preflight_error([item])
    assert item["label"] in msg and "affine" in msg
    # a sub-tolerance difference (float32 rounding of the header) is accepted
    tiny = np.eye(4)
    tiny[0, 3] = 1e-5
    assert preflight([case(label_affine=tiny, name="ok")]) is None


def test_singular_affine(case, tmp_path):
    """A header whose sform has a zero column (nibabel refuses to write one, so patch the bytes)."""
    import nibabel as nib

    item = case(label=False)
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), np.eye(4)), str(path))
    raw = path.read_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    hdr["srow_y"] = [0.0, 0.0, 0.0, 0.0]
    path.write_bytes(hdr.binaryblock + raw[348:])
    assert abs(np.linalg.det(nib.load(str(path)).affine[:3, :3])) < 1e-9
    item["image"] = str(path)
    msg = _preflight_error([item], need_label=False)
    assert str(path) in msg and "singular" in msg


@pytest.mark.parametrize("spacing, refused", [(300.0, True), (3.0, False), (0.01, False)])
def test_absurd_spacing_that_would_explode_the_resampled_grid(case, tmp_path, spacing, refused):
    """A header claiming 300 mm voxels would resample 8 x 9 x 10 voxels to a 2400 x 2700 x 3000 grid at 1 mm:
    refused from the header, before any allocation; plausible or tiny spacings pass."""
    import nibabel as nib

    path = tmp_path / "big.nii.gz"
    img = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(img, np.diag([spacing, spacing, spacing, 1.0])), str(path))
    items = [{"image": str(path)}]
    if refused:
        msg = _preflight_error(items, need_label=False, target_spacing=(1.0, 1.0, 1.0))
        assert str(path) in msg and "(300.0, 300.0, 300.0) mm" in msg and "spacing is probably wrong" in msg
    else:
        preflight(items, need_label=False, target_spacing=(1.0, 1.0, 1.0))
    preflight(items, need_label=False)  # no target spacing (no resampling): nothing to refuse


def test_missing_label_when_needed(case):
    item = case(label=False)
    msg = _preflight_error([item])
    assert item["image"] in msg and "no label" in msg
    assert preflight([item], need_label=False) is None


def test_channel_count(case, write_nifti):
    item = case(image=np.random.default_rng(1).normal(size=(*SHAPE, 2)).astype(np.float32))
    assert preflight([item], in_channels=2) is None
    msg = _preflight_error([item], in_channels=1)
    assert "2 channel(s)" in msg and "expects 1" in msg
    two_files = dict(case(name="m"))
    two_files["image"] = [
        two_files["image"],
        str(write_nifti("m_t2.nii.gz", np.random.default_rng(2).normal(size=SHAPE))),
    ]
    assert preflight([two_files], in_channels=2) is None
    assert "expects 3" in _preflight_error([two_files], in_channels=3)


def test_channel_files_on_different_grids(case, write_nifti):
    item = case(name="g")
    other = str(write_nifti("g_t2.nii.gz", np.random.default_rng(2).normal(size=(8, 9, 12))))
    item["image"] = [item["image"], other]
    msg = _preflight_error([item])
    assert other in msg and "grid" in msg


def test_bad_header_files(case, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"junk" * 100)
    txt = tmp_path / "image.txt"
    txt.write_text("x")
    items = []
    for p in (empty, junk, txt):
        it = case(name=p.stem.replace(".", "_"))
        it["image"] = str(p)
        items.append(it)
    msg = _preflight_error(items)
    assert msg.startswith("3 problem(s)")
    assert f"{empty}: empty file" in msg and f"{junk}: not a readable NIfTI" in msg and f"{txt}: unsupported" in msg


def test_many_problems_are_listed_up_to_ten(tmp_path):
    items = [{"image": str(tmp_path / f"m{i}.nii.gz"), "label": str(tmp_path / f"l{i}.nii.gz")} for i in range(13)]
    msg = _preflight_error(items, what="evaluation datalist")
    assert msg.startswith("13 problem(s) in the evaluation datalist")
    assert "m9.nii.gz" in msg and "m10.nii.gz" not in msg and "and 3 more" in msg


def test_dicom_folders_are_left_to_the_loader(tmp_path, case):
    folder = tmp_path / "series"
    folder.mkdir()
    item = case()
    item["image"] = str(folder)
    item["label"] = str(folder)
    assert preflight([item]) is None


# --------------------------------------------------------------------------------------------------- CheckVolumed


@pytest.fixture
def load_check():
    def run(item, num_classes=3):
        keys = ["image", "label"] if "label" in item else ["image"]
        return Compose(
            [LoadVolumed(keys, ensure_channel_first=True, image_only=True), CheckVolumed("image", "label", num_classes)]
        )(item)

    return run


def _data_error(exc_info) -> DataError:
    err = exc_info.value
    while err is not None and not isinstance(err, DataError):
        err = err.__cause__ or err.__context__
    assert err is not None, f"no DataError in {exc_info.value!r}"
    return err


def test_checkvolumed_passes_good_data(case, load_check):
    out = load_check(case())
    assert tuple(out["image"].shape) == (1, *SHAPE)
    assert set(torch.unique(out["label"]).tolist()) == {0, 1}


def test_nan_image(case, load_check):
    img = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img[1, 2, 3] = np.nan
    img[4, 4, 4] = np.inf
    item = case(image=img)
    with pytest.raises(Exception) as info:
        load_check(item)
    err = _data_error(info)
    assert item["image"] in str(err) and "2 NaN/Inf" in str(err)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_constant_image(case, load_check, dtype):
    item = case(image=np.full(SHAPE, 7, dtype))
    with pytest.raises(Exception) as info:
        load_check(item)
    err = _data_error(info)
    assert item["image"] in str(err) and "constant" in str(err)


def test_label_outside_classes(case, load_check):
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 1, 1], lab[2, 2, 2] = 2, 5
    item = case(label=lab)
    with pytest.raises(Exception) as info:
        load_check(item, num_classes=2)
    err = _data_error(info)
    assert item["label"] in str(err) and "[2, 5]" in str(err) and "0..1" in str(err)
    assert tuple(torch.unique(load_check(item, num_classes=6)["label"]).tolist()) == (0, 2, 5)
    assert load_check(item, num_classes=None)["label"].max() == 5


def test_label_value_a_case_does_not_annotate(case, load_check):
    """An item carrying its case's annotated classes (``labels_present``) must not hold other label values: the
    marginal loss would read such a voxel as impossible (an infinite loss) rather than name the file."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 1, 1], lab[2, 2, 2] = 1, 2
    item = case(label=lab)
    with pytest.raises(Exception) as info:
        load_check({**item, "annotated": torch.tensor([True, True, False])})
    err = _data_error(info)
    assert item["label"] in str(err) and "label values [2] are not in the case's labels_present" in str(err)
    assert load_check({**item, "annotated": torch.tensor([True, True, True])})["label"].max() == 2


def test_negative_label(case, load_check):
    lab = np.zeros(SHAPE, np.int16)
    lab[0, 0, 0] = -1
    item = case(label=lab)
    with pytest.raises(Exception) as info:
        load_check(item)
    assert "negative" in str(_data_error(info))


def test_non_integer_label(case, load_check):
    lab = np.zeros(SHAPE, np.float32)
    lab[2:4, 2:4, 2:4] = 0.5
    item = case(label=lab)
    with pytest.raises(Exception) as info:
        load_check(item)
    err = _data_error(info)
    assert item["label"] in str(err) and "non-integer" in str(err)


def test_float_label_is_rounded(case, load_check):
    lab = np.zeros(SHAPE, np.float32)
    lab[1:3, 1:3, 1:3] = 0.9999
    lab[4:6, 4:6, 4:6] = 2.0001
    lab[7, 7, 7] = 1e-5
    out = load_check(case(label=lab))
    values = out["label"]
    assert set(torch.unique(values).tolist()) == {0.0, 1.0, 2.0}
    assert int((values == 1).sum()) == 8 and int((values == 2).sum()) == 8
    assert str(out["label"].meta["filename_or_obj"]).endswith("c_lab.nii.gz")  # metadata kept


def test_loaded_shape_mismatch():
    img = torch.rand(1, 4, 4, 4)
    lab = torch.zeros(1, 4, 4, 5)
    with pytest.raises(DataError, match="does not match"):
        CheckVolumed(num_classes=2)({"image": img, "label": lab})


def test_image_only_and_missing_label_key():
    img = torch.rand(1, 4, 4, 4)
    assert CheckVolumed("image", None)({"image": img})["image"] is img
    assert "label" not in CheckVolumed()({"image": img})


def test_array_checks_directly():
    with pytest.raises(DataError, match="x.nii: label map has NaN"):
        check_label_array(np.array([0.0, np.nan]), "x.nii", 2)
    assert check_label_array(np.array([0, 1, 1], np.uint8), "y", 2).tolist() == [0, 1, 1]
    check_image_array(np.array([0, 1], np.int16), "z")
    with pytest.raises(DataError, match="constant"):
        check_image_array(torch.zeros(3, 3), "z")
