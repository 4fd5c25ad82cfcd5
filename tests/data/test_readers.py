"""VolumeReader / load_volume / read_dicom_series: NIfTI and DICOM input, and one DataError naming the file for
every unreadable input."""

from __future__ import annotations

import copy
import gzip
import pickle
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImaged

from volmae.cli.common import find_volmae_error
from volmae.data.readers import MAX_VOXELS, LoadVolumed, VolumeReader, load_volume, read_dicom_series
from volmae.data.transforms import get_preprocessing, infer_transforms
from volmae.errors import DataError

# Sizes (x, y, z) from dicom_hippocampus_crops/PROVENANCE.md; Study1 is given as the study folder, which holds one
# series sub-folder, the others as the series folder itself.
DICOM_SERIES = {
    "Study1": ("Study1", (35, 51, 32), (2, 154)),
    "Study2": ("Study2/14_HCropVolume", (36, 48, 35), (0, 5076)),
    "Study3": ("Study3/11_HCropVolume", (34, 50, 40), (2, 194)),
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _load(path, **kw):
    return LoadImaged("image", reader=VolumeReader(), ensure_channel_first=True, image_only=True, **kw)(
        {"image": str(path)}
    )["image"]


def _load_volumed(path):
    return LoadVolumed("image", ensure_channel_first=True, image_only=True)({"image": str(path)})["image"]


def _anisotropic_affine() -> np.ndarray:
    aff = np.diag([1.5, 2.0, 2.5, 1.0])
    aff[:3, 3] = [-10.0, 4.0, 7.5]
    return aff


# --------------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_through_loadimaged_keeps_shape_affine_and_voxels(write_nifti, suffix):
    arr = np.random.default_rng(0).normal(size=(7, 9, 11)).astype(np.float32)
    aff = _anisotropic_affine()
    path = write_nifti(f"vol{suffix}", arr, aff)
    img = _load(path)
    assert tuple(img.shape) == (1, 7, 9, 11)
    np.testing.assert_allclose(np.asarray(img.affine), aff)
    np.testing.assert_allclose(img[0].numpy(), arr)
    assert str(img.meta["filename_or_obj"]) == str(path)
    np.testing.assert_allclose(np.asarray(img.pixdim[:3]), [1.5, 2.0, 2.5])


def test_list_of_files_stacks_channels(write_nifti):
    a = np.zeros((5, 6, 7), np.float32)
    b = np.ones((5, 6, 7), np.float32)
    img = LoadImaged("image", reader=VolumeReader(), ensure_channel_first=True, image_only=True)(
        {"image": [str(write_nifti("a.nii.gz", a)), str(write_nifti("b.nii.gz", b))]}
    )["image"]
    assert tuple(img.shape) == (2, 5, 6, 7)
    assert float(img[0].max()) == 0.0 and float(img[1].min()) == 1.0


def _read_while_another_thread_reads(reader, mine, theirs):
    """``reader.read(mine)``, then another thread's ``reader.read(theirs)``, then ``reader.get_data`` of mine: the
    order in which ``CacheDataset``'s thread pool can interleave two cases on one shared reader."""
    img = reader.read(mine)
    other = threading.Thread(target=reader.read, args=(theirs,))
    other.start()
    other.join()
    return reader.get_data(img)


def test_one_reader_shared_by_threads_keeps_each_threads_files(write_nifti):
    a0, a1 = write_nifti("a0.nii.gz", np.zeros((5, 6, 7), np.float32)), write_nifti("a1.nii.gz", np.ones((5, 6, 7)))
    b = write_nifti("b.nii.gz", np.full((5, 6, 7), 2.0, np.float32))
    data, _ = _read_while_another_thread_reads(VolumeReader(), [str(a0), str(a1)], str(b))
    assert data.shape == (2, 5, 6, 7)  # MONAI's NibabelReader would zip the two images with b's one name: 1 channel
    assert data[0].max() == 0.0 and data[1].min() == 1.0
    cut = write_nifti("cut.nii.gz", np.random.default_rng(1).normal(size=(30, 30, 30)).astype(np.float32))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        _read_while_another_thread_reads(VolumeReader(), str(cut), str(b))
    _assert_names(info, cut, "truncated")  # not b, whose name the other thread's read left on the reader
    assert str(b) not in str(info.value)


def test_reader_pickles_and_copies(write_nifti):
    path = write_nifti("v.nii.gz", np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    loader = LoadVolumed("image", ensure_channel_first=True, image_only=True)
    for twin in (copy.deepcopy(loader), pickle.loads(pickle.dumps(loader))):
        assert tuple(twin({"image": str(path)})["image"].shape) == (1, 3, 4, 5)


@pytest.mark.parametrize("shape", [(5, 6, 7, 1), (5, 6, 7, 1, 1)])
def test_trailing_singleton_dimensions_read_as_the_3d_volume(tmp_path, shape):
    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    assert nib.load(path).shape == shape
    img = _load_volumed(path)
    assert tuple(img.shape) == (1, 5, 6, 7)
    np.testing.assert_array_equal(img[0].numpy(), arr.reshape(5, 6, 7))


def test_load_volume_returns_array_and_affine(write_nifti):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    aff = _anisotropic_affine()
    data, affine = load_volume(write_nifti("v.nii.gz", arr, aff))
    np.testing.assert_array_equal(data, arr)
    np.testing.assert_allclose(affine, aff)


def test_verify_suffix(tmp_path):
    r = VolumeReader()
    assert r.verify_suffix("a.nii.gz") and r.verify_suffix("A.NII") and r.verify_suffix(["a.nii", "b.nii.gz"])
    assert r.verify_suffix(str(tmp_path))  # a folder: a DICOM series
    assert not r.verify_suffix("a.png")
    assert not r.verify_suffix(["a.nii.gz", "b.mha"])


# --------------------------------------------------------------------------------------------------- DICOM


@pytest.mark.realdata
@pytest.mark.parametrize("study", sorted(DICOM_SERIES))
def test_dicom_series_shape_voxels_and_ras_affine(dicom_crops, study):
    import SimpleITK as sitk

    rel, shape, (lo, hi) = DICOM_SERIES[study]
    folder = dicom_crops / rel
    img = read_dicom_series(folder)
    assert img.shape == shape
    data = np.asarray(img.dataobj)
    assert (int(data.min()), int(data.max())) == (lo, hi)

    # Independent reference: SimpleITK's own voxel -> LPS physical point, with x and y negated for RAS.
    series_dir = next(
        p
        for p in [dicom_crops / rel, *sorted((dicom_crops / rel).iterdir())]
        if p.is_dir() and sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
    )
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series_dir)))
    ref_arr = sitk.GetArrayFromImage(ref)  # z y x
    for idx in [(0, 0, 0), (shape[0] - 1, 0, 0), (0, shape[1] - 1, 0), (3, 7, shape[2] - 1), (10, 20, 15)]:
        lps = ref.TransformIndexToPhysicalPoint([int(i) for i in idx])
        ras = img.affine @ np.array([*idx, 1.0])
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
        assert data[idx] == ref_arr[idx[2], idx[1], idx[0]]
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), [1.0, 1.0, 1.0], atol=1e-6)


@pytest.mark.realdata
def test_dicom_study_folder_through_loadimaged(dicom_crops):
    img = _load(dicom_crops / "Study1")
    assert tuple(img.shape) == (1, 35, 51, 32)
    series = read_dicom_series(dicom_crops / "Study1" / "13_HCropVolume")
    np.testing.assert_allclose(np.asarray(img.affine), series.affine)
    np.testing.assert_array_equal(img[0].numpy(), np.asarray(series.dataobj))
    # The reader converts LPS to RAS: DICOM's identity direction becomes L, P, S axis codes in RAS space.
    assert nib.aff2axcodes(series.affine) == ("L", "P", "S")
    assert str(img.meta["filename_or_obj"]).endswith("Study1")
    arr, aff = load_volume(dicom_crops / "Study1")
    assert arr.shape == (35, 51, 32)
    np.testing.assert_allclose(aff, series.affine)


@pytest.mark.realdata
def test_folder_with_two_series_is_refused(two_series_folder):
    with pytest.raises(DataError, match="2 DICOM series") as info:
        read_dicom_series(two_series_folder)
    assert str(two_series_folder) in str(info.value)
    with pytest.raises(DataError) as info:
        _load_volumed(two_series_folder)
    assert str(two_series_folder) in str(info.value)


@pytest.mark.realdata
def test_pipeline_keeps_the_readers_data_error(two_series_folder):
    """MONAI wraps transform errors in RuntimeError; the DataError must stay in the chain (the CLI looks for it)."""
    with pytest.raises(RuntimeError) as info:
        infer_transforms(get_preprocessing("hippocampus"))({"image": str(two_series_folder)})
    err = find_volmae_error(info.value)
    assert isinstance(err, DataError) and str(two_series_folder) in str(err)


@pytest.mark.realdata
def test_series_id_picks_one_series(two_series_folder, dicom_crops):
    import SimpleITK as sitk

    (sid,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(dicom_crops / "Study2" / "14_HCropVolume"))
    assert read_dicom_series(two_series_folder, series_id=sid).shape == (36, 48, 35)
    with pytest.raises(DataError, match="not found") as info:
        read_dicom_series(two_series_folder, series_id="1.2.3.4")
    assert str(two_series_folder) in str(info.value)


@pytest.mark.realdata
@pytest.mark.parametrize("fault", ["missing", "duplicate"])
def test_series_with_a_missing_or_duplicated_slice_is_refused(dicom_crops, tmp_path, fault):
    """ITK would stack the slices at one uniform spacing and silently shrink (or stretch) the anatomy."""
    import shutil

    import SimpleITK as sitk

    series = tmp_path / "study"
    shutil.copytree(dicom_crops / "Study1", series)
    (sub,) = [p for p in series.rglob("*") if p.is_dir()]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(sub))
    middle = Path(files[len(files) // 2])
    if fault == "missing":
        middle.unlink()
    else:
        shutil.copy(middle, sub / "copy_of_middle.dcm")
    with pytest.raises(DataError, match="slices are not evenly spaced") as info:
        load_volume(series)
    assert str(series) in str(info.value)


def test_folder_without_dicom_is_refused(tmp_path):
    folder = tmp_path / "nothing_here"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "notes.txt").write_text("not a DICOM file")
    with pytest.raises(DataError, match="no DICOM series") as info:
        load_volume(folder)
    assert str(folder) in str(info.value)


def test_read_dicom_series_needs_a_folder(tmp_path):
    with pytest.raises(DataError, match="not a DICOM series folder"):
        read_dicom_series(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------- bad files


def _assert_names(info, path: Path, *words: str) -> None:
    msg = str(info.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg


def _loaders():
    return {
        "load_volume": lambda p: load_volume(p),
        "LoadVolumed": lambda p: _load_volumed(p),
        "pipeline": lambda p: _through_pipeline(p),
    }


def _through_pipeline(path):
    try:
        return infer_transforms(get_preprocessing("mri"))({"image": str(path)})
    except RuntimeError as e:  # MONAI's "applying transform ..." wrapper
        err = find_volmae_error(e)
        if err is None:
            raise
        raise err from None


@pytest.mark.parametrize("how", sorted(_loaders()))
def test_zero_byte_file(tmp_path, how):
    path = tmp_path / "empty.nii.gz"
    path.touch()
    with pytest.raises(DataError) as info:
        _loaders()[how](path)
    _assert_names(info, path, "empty")


@pytest.mark.parametrize("how", sorted(_loaders()))
def test_missing_file(tmp_path, how):
    path = tmp_path / "nope" / "missing.nii.gz"
    with pytest.raises(DataError) as info:
        _loaders()[how](path)
    _assert_names(info, path, "not found")


@pytest.mark.parametrize("how", sorted(_loaders()))
def test_non_nifti_suffix(tmp_path, how):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError) as info:
        _loaders()[how](path)
    _assert_names(info, path)


@pytest.mark.parametrize("how", sorted(_loaders()))
@pytest.mark.parametrize(
    "content",
    [b"this is not a NIfTI file\n" * 40, gzip.compress(b"plain text, gzipped\n" * 40)],
    ids=["text", "gz-text"],
)
def test_non_nifti_content(tmp_path, how, content):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        _loaders()[how](path)
    _assert_names(info, path, "NIfTI")


@pytest.mark.parametrize("how", sorted(_loaders()))
def test_truncated_synthetic_gzip(write_nifti, how):
    arr = np.random.default_rng(1).normal(size=(30, 30, 30)).astype(np.float32)
    path = write_nifti("cut.nii.gz", arr)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as info:
        _loaders()[how](path)
    _assert_names(info, path, "truncated")


@pytest.mark.realdata
@pytest.mark.parametrize("how", sorted(_loaders()))
def test_truncated_real_gzip(msd_hippocampus, tmp_path, how):
    raw = (msd_hippocampus / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()
    path = tmp_path / "hippocampus_001.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as info:
        _loaders()[how](path)
    _assert_names(info, path, "truncated")


def test_header_declaring_huge_volume_is_refused_before_allocation(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((5000, 5000, 5000))
    assert 5000**3 > MAX_VOXELS
    hdr["vox_offset"] = 352
    path = tmp_path / "huge.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)
    with pytest.raises(DataError) as info:
        load_volume(path)
    _assert_names(info, path, "voxels")


def test_loadvolumed_reads_like_loadimaged(write_nifti):
    arr = np.random.default_rng(2).integers(0, 3, (6, 7, 8)).astype(np.uint8)
    path = write_nifti("lab.nii.gz", arr, _anisotropic_affine())
    a, b = _load(path), _load_volumed(path)
    assert torch.equal(b[0].as_tensor().to(torch.uint8), torch.from_numpy(arr))
    assert torch.equal(a.as_tensor(), b.as_tensor())
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine))
