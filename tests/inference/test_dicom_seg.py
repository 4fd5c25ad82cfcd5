"""DICOM-SEG output (volmae.inference.dicom_seg) on the real DICOM hippocampus crops: a label map written as a SEG and
read back with highdicom equals the label map voxel for voxel, on the series as stored and on a copy re-oriented
obliquely with its files shuffled; the SEG references its source series; missing tags and foreign grids are named."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from volmae.data.readers import read_dicom_series
from volmae.errors import DataError
from volmae.inference.dicom_seg import read_source_series, write_dicom_seg

pytestmark = pytest.mark.realdata
LABELS = {0: "background", 1: "anterior", 3: "posterior body"}  # a gap: segment 2 is label value 3


def series_of(dicom_crops: Path, study: str = "Study2") -> Path:
    return next(p for p in (dicom_crops / study).iterdir() if p.is_dir())


def copy_series(src: Path, dst: Path, edit: Callable | None = None, rename: Callable | None = None) -> Path:
    """A copy of the series folder ``src`` at ``dst``, each dataset passed through ``edit(ds, index)`` (index in
    the order of the sorted file names) and saved as ``rename(name, index)``."""
    import pydicom

    dst.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        if edit is None and rename is None:
            shutil.copy(f, dst / f.name)
            continue
        ds = pydicom.dcmread(f)
        if edit is not None:
            edit(ds, i)
        ds.save_as(dst / (rename(f.name, i) if rename else f.name))
    return dst


def thresholds(image: np.ndarray, values=(1, 3)) -> np.ndarray:
    """A non-trivial label map from the image's intensities: every class present, none filling the volume."""
    lo, hi = np.percentile(image, [60, 90])
    seg = np.zeros(image.shape, np.uint8)
    seg[image > lo] = values[0]
    seg[image > hi] = values[1]
    return seg


def seg_on_grid(path: Path, shape, affine: np.ndarray, labels: dict = LABELS) -> np.ndarray:
    """The SEG at ``path`` read back with highdicom (its own geometry: ``get_volume``'s affine, LPS), sampled at the
    voxel centres of a label map of ``shape`` / RAS ``affine``; segment numbers turned back into label values."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    vol = seg.get_volume(combine_segments=True)
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    lps = np.diag([-1.0, -1.0, 1.0]) @ (affine[:3, :3] @ ijk + affine[:3, 3:])
    inv = np.linalg.inv(vol.affine)
    where = inv[:3, :3] @ lps + inv[:3, 3:]
    index = np.rint(where)
    assert np.abs(where - index).max() < 1e-3, "the SEG's frames are not on the label map's grid"
    index = index.astype(int)
    assert (index >= 0).all() and (index < np.array(vol.array.shape)[:, None]).all()
    numbers = vol.array[index[0], index[1], index[2]].reshape(shape)
    values = np.array([0, *sorted(k for k in labels if k > 0)])
    return values[numbers]


def test_label_map_round_trips_and_references_its_series(dicom_crops, tmp_path):
    import highdicom as hd

    import volmae

    series = series_of(dicom_crops)
    img = read_dicom_series(series)
    label_map = thresholds(np.asarray(img.dataobj))
    out = write_dicom_seg(series, label_map, img.affine, LABELS, tmp_path / "seg.dcm", model="model.pt (unetr)")
    assert out == tmp_path / "seg.dcm" and not list(tmp_path.glob(".*.tmp"))
    assert np.array_equal(seg_on_grid(out, label_map.shape, img.affine), label_map)

    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior", "posterior body"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "volmae" and algorithm.AlgorithmVersion == volmae.__version__
    assert algorithm.AlgorithmSource == "model.pt (unetr)"
    sources = read_source_series(series)
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == {d.SOPInstanceUID for d in sources}
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    # every frame points at the source slice it lies on
    by_uid = {d.SOPInstanceUID: d for d in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position], [float(v) for v in by_uid[uid].ImagePositionPatient])


def test_oblique_reoriented_series_with_shuffled_files_round_trips(dicom_crops, tmp_path):
    """Nothing is taken from the file order or an axial orientation: a copy turned oblique (rows, columns and
    slices along tilted axes, anisotropic pixels), its slices stacked against the file names' order."""
    angle = np.deg2rad(25)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    rows, cols = tilt @ np.array([0.0, 1.0, 0.0]), tilt @ np.array([0.0, 0.0, -1.0])  # a tilted sagittal plane
    normal = np.cross(rows, cols)
    src = series_of(dicom_crops, "Study1")
    n = len(list(src.iterdir()))

    def edit(ds, i):
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*rows, *cols)]
        ds.PixelSpacing = ["0.8", "1.3"]
        ds.SliceThickness = "2"
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([10.0, -20.0, 30.0]) + 2.0 * (n - 1 - i) * normal]

    series = copy_series(src, tmp_path / "oblique", edit, rename=lambda name, i: f"{(i * 7) % n:03d}.dcm")
    img = read_dicom_series(series)
    assert not np.allclose(np.abs(img.affine[:3, :3]), np.diag(np.abs(np.diag(img.affine[:3, :3]))), atol=0.1)
    label_map = thresholds(np.asarray(img.dataobj))
    out = write_dicom_seg(series, label_map, img.affine, LABELS, tmp_path / "seg.dcm")
    assert np.array_equal(seg_on_grid(out, label_map.shape, img.affine), label_map)


def test_missing_tags_are_named(dicom_crops, tmp_path):
    def edit(ds, i):
        del ds.FrameOfReferenceUID
        if i == 0:
            del ds.StudyInstanceUID

    series = copy_series(series_of(dicom_crops, "Study1"), tmp_path / "s", edit)
    msg = "cannot write a DICOM-SEG, the series lacks StudyInstanceUID (1 of 32 files), FrameOfReferenceUID (32 of 32"
    with pytest.raises(DataError, match=re.escape(msg)):
        read_source_series(series)


def test_a_label_map_off_the_series_grid_is_refused(dicom_crops, tmp_path):
    series = series_of(dicom_crops)
    img = read_dicom_series(series)
    shifted = img.affine.copy()
    shifted[:3, 3] += 0.5 * img.affine[:3, 2]  # half a slice along the slice axis
    label_map = thresholds(np.asarray(img.dataobj))
    with pytest.raises(DataError, match="does not lie on the label map's grid"):
        write_dicom_seg(series, label_map, shifted, LABELS, tmp_path / "seg.dcm")
    with pytest.raises(DataError, match="does not lie on the label map's grid"):
        write_dicom_seg(series, label_map[:, :, :-3], img.affine, LABELS, tmp_path / "seg.dcm")
    assert not any(tmp_path.iterdir())
