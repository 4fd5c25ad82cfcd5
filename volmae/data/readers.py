"""Volume readers: NIfTI through nibabel and DICOM series folders through SimpleITK, as one MONAI ``ImageReader``.

Why our own reader: MONAI reads DICOM folders through ITK (``itk``) or pydicom, neither of which is a volmae
dependency, and its readers let nibabel/zlib exceptions escape without naming the file. ``VolumeReader`` turns a
DICOM series into a RAS ``Nifti1Image`` (SimpleITK gives LPS: the first two axes' signs flip) and then reuses
MONAI's ``NibabelReader`` for everything else, so metadata (affine, spatial shape, pixdim) is identical for both.
Every failure becomes one :class:`~volmae.errors.DataError` that names the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import NibabelReader
from monai.transforms import LoadImaged
from monai.utils import ensure_tuple

from volmae.errors import DataError

__all__ = [
    "VolumeReader",
    "LoadVolumed",
    "open_nifti",
    "read_dicom_series",
    "dicom_series_files",
    "is_dicom_dir",
    "load_volume",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Declared sizes beyond this are refused before any allocation (a 2 kB file can claim 10^12 voxels).
MAX_VOXELS = 2_000_000_000


def is_dicom_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def dicom_series_ids(folder: str | os.PathLike) -> list[str]:
    """The DICOM series stored directly in ``folder`` (not its sub-folders); ``[]`` for anything else."""
    import SimpleITK as sitk

    if not Path(folder).is_dir():
        return []
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def _lps_to_ras(affine: np.ndarray) -> np.ndarray:
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ affine


def _check_slice_positions(folder: Path, reader, n: int, tolerance: float = 0.1) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal (a missing slice, a duplicate, a
    mixed acquisition): ITK stacks them at one uniform spacing and every distance in the volume would be wrong
    without a word. Reads the ``n`` slices' position / orientation tags from the series ``reader`` that just read
    them (``MetaDataDictionaryArrayUpdateOn``); ``tolerance`` is relative to the median slice gap."""
    position, orientation = "0020|0032", "0020|0037"
    if n < 3 or not reader.HasMetaDataKey(0, orientation):
        return
    if not all(reader.HasMetaDataKey(i, position) for i in range(n)):
        return  # no positions to check against

    def numbers(i: int, key: str) -> list[float]:
        return [float(v) for v in reader.GetMetaData(i, key).split("\\")]

    cosines = numbers(0, orientation)
    normal = np.cross(cosines[:3], cosines[3:])
    positions = [float(np.dot(numbers(i, position), normal)) for i in range(n)]
    gaps = np.diff(np.sort(positions))
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > tolerance * max(abs(step), 1e-6))
    if step <= 0 or bad.size:
        at = ", ".join(f"{gaps[i]:.3g} mm after slice {i + 1}" for i in bad[:3])
        raise DataError(
            f"{folder}: slices are not evenly spaced (median gap {step:.3g} mm; {at or 'duplicate positions'}): "
            "a slice is missing or the series mixes acquisitions"
        )


def dicom_series_files(folder: str | os.PathLike, series_id: str | None = None) -> list[str]:
    """The files of the one DICOM series in ``folder`` (or, when none is there, in its sub-folders), as
    SimpleITK / GDCM sorts them; a ``DataError`` when there is none or more than one."""
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a DICOM series folder")
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" is expected while searching
    reader = sitk.ImageSeriesReader()
    # The folder itself, else its sub-folders (a study folder holding one series folder is common in exports).
    found = [(str(folder), i) for i in reader.GetGDCMSeriesIDs(str(folder)) or []]
    if not found:
        for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
            found += [(str(sub), i) for i in reader.GetGDCMSeriesIDs(str(sub)) or []]
    if not found:
        raise DataError(f"{folder}: no DICOM series found in this folder or its sub-folders")
    if series_id is not None:
        found = [f for f in found if f[1] == series_id]
        if not found:
            raise DataError(f"{folder}: series {series_id!r} not found")
    if len(found) > 1:
        listing = ", ".join(f"{Path(d).name}:{i}" for d, i in found[:6])
        raise DataError(
            f"{folder}: holds {len(found)} DICOM series ({listing}); pass one series folder (or a series id)"
        )
    series_dir, sid = found[0]
    return list(reader.GetGDCMSeriesFileNames(series_dir, sid))


def read_dicom_series(folder: str | os.PathLike, series_id: str | None = None) -> nib.Nifti1Image:
    """Read one DICOM series folder into a RAS ``Nifti1Image`` (array axes x, y, z as in NIfTI)."""
    import SimpleITK as sitk

    folder = Path(folder)
    files = dicom_series_files(folder, series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # keep each slice's tags for the spacing check
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise DataError(f"{folder}: unreadable DICOM series ({str(e).strip().splitlines()[-1]})") from None
    _check_slice_positions(folder, reader, len(files))
    if img.GetDimension() != 3 or img.GetSize()[2] < 2:
        raise DataError(f"{folder}: DICOM series is not a 3D volume (size {img.GetSize()})")
    arr = sitk.GetArrayFromImage(img)  # z y x
    if arr.ndim == 4:  # z y x c (RGB or vector DICOM)
        raise DataError(f"{folder}: multi-component DICOM pixels are not supported (shape {arr.shape})")
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))  # x y z
    spacing = np.array(img.GetSpacing(), dtype=float)
    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = img.GetOrigin()
    return nib.Nifti1Image(data, _lps_to_ras(affine))


def open_nifti(path: str | os.PathLike, **kwargs) -> nib.Nifti1Image:
    """Open a NIfTI file (header only; voxels are read lazily), turning every failure into a ``DataError``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not str(path).lower().endswith(NIFTI_SUFFIXES):
        raise DataError(f"{path}: unsupported format (expected .nii, .nii.gz or a DICOM series folder)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        img = nib.load(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - nibabel / gzip raise many types
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    n = np.prod(img.shape, dtype=np.float64)
    if n > MAX_VOXELS:
        raise DataError(f"{path}: header declares {img.shape} = {n:.3g} voxels")
    return img


class VolumeReader(NibabelReader):
    """MONAI reader for ``.nii`` / ``.nii.gz`` files and DICOM series folders; a list of files stacks channels.

    Trailing singleton dimensions are squeezed (MONAI's ``squeeze_non_spatial_dims``): a 5D ``X Y Z 1 1`` file, as
    some converters write, reads as the 3D volume it is, not as a 4D array the spatial transforms refuse.

    Thread safety: MONAI's ``NibabelReader`` keeps the file names of the last ``read`` on the instance and pairs
    them with the images in ``get_data``; ``LoadImage`` holds one reader that every thread of ``CacheDataset``'s
    pool shares, so between one thread's ``read`` and ``get_data`` another thread's ``read`` replaces them (an error
    then names another case's file, and a multi-file image zipped with a one-file list loses channels). Here the
    names are per thread.
    """

    def __init__(self, *args, squeeze_non_spatial_dims: bool = True, **kwargs) -> None:
        self._local = threading.local()
        super().__init__(*args, squeeze_non_spatial_dims=squeeze_non_spatial_dims, **kwargs)

    @property
    def filenames(self):
        return getattr(self._local, "filenames", ())

    @filenames.setter
    def filenames(self, value) -> None:
        self._local.filenames = value

    def __getstate__(self) -> dict:  # a thread-local does not pickle or deepcopy (DataLoader workers, MONAI copies)
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(str(f).lower().endswith(NIFTI_SUFFIXES) or is_dicom_dir(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        filenames = ensure_tuple(data)
        self.filenames = filenames
        images = []
        for name in filenames:
            path = Path(name)
            if is_dicom_dir(path):
                images.append(read_dicom_series(path))
                continue
            images.append(open_nifti(path, **{**self.kwargs, **kwargs}))
        return images if len(filenames) > 1 else images[0]

    def _get_array_data(self, img, filename):
        try:
            return super()._get_array_data(img, filename)
        except Exception as e:  # noqa: BLE001 - truncated gzip: EOFError, zlib.error, OSError, ValueError
            raise DataError(
                f"{filename}: image data unreadable, file truncated or corrupt ({type(e).__name__}: {e})"
            ) from None


@contextlib.contextmanager
def _quiet_unused_dicom_reader():
    """MONAI's ``LoadImage`` builds every default reader, with pydicom installed (highdicom, for DICOM-SEG output,
    needs it) also its nvImageCodec DICOM reader, which without CUDA's nvImageCodec logs a warning and warns on each
    construction; volmae never uses it (``VolumeReader`` reads everything), so that notice is silenced here."""
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            yield
    finally:
        logger.disabled = disabled


class LoadVolumed(LoadImaged):
    """``LoadImaged`` that reads through :class:`VolumeReader` only, so its ``DataError`` reaches the caller.

    Given a reader *instance*, MONAI's ``LoadImage`` catches that reader's exceptions, retries its default readers
    and raises a generic "cannot find a suitable reader" ``RuntimeError`` that no longer carries the ``DataError``
    (a DICOM folder with two series, an empty file ...). A reader passed at call time is used directly.
    """

    def __init__(self, keys, **kwargs) -> None:
        kwargs.setdefault("reader", VolumeReader())
        with _quiet_unused_dicom_reader():
            super().__init__(keys, **kwargs)
        self.volume_reader = kwargs["reader"]

    def __call__(self, data, reader=None):
        return super().__call__(data, reader or self.volume_reader)


def load_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one volume (NIfTI path or DICOM folder): ``(array in x y z order, 4x4 RAS affine)``; ``DataError``s."""
    reader = VolumeReader()
    img = reader.read(path)
    return reader._get_array_data(img, str(path)), np.asarray(img.affine, dtype=float)
