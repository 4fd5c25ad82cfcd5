"""A corpus of bad input volumes, generated on demand: one function writes each kind of broken file a PACS export or
a careless conversion produces, and says which words the error for it must contain.

Used by ``tests/inference/test_corpus.py`` (every kind through ``volmae-infer`` and, for label faults, through
``volmae-train``'s preflight); add a kind here and it is tested everywhere. Real data is optional: with
``msd_hippocampus`` the corrupt files are cut from a real MRI, without it from a synthetic one.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (36, 50, 35)  # the hippocampus crops' size


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100 + 20 * rng.normal(size=SHAPE)).astype(np.float32)


def _save(path: Path, arr: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def _patched_header(path: Path, arr: np.ndarray, **fields) -> Path:
    """Write ``arr`` as an uncompressed .nii, then overwrite raw header fields (nibabel refuses to set many bad
    values itself)."""
    _save(path, arr)
    raw = path.read_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    for k, v in fields.items():
        hdr[k] = v
    path.write_bytes(hdr.binaryblock + raw[348:])
    return path


def _real_or_synthetic_gz(folder: Path, data_dir: Path | None) -> bytes:
    if data_dir is not None:
        return (data_dir / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()
    return gzip.compress(_save(folder / "_src.nii", _volume()).read_bytes())


# name -> (writer(folder, data_dir) -> path, words the error must contain)
Writer = Callable[[Path, "Path | None"], Path]


def _truncated(f, d):
    raw = _real_or_synthetic_gz(f, d)
    (f / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    return f / "truncated.nii.gz"


def _not_gzip(f, d):
    (f / "not_gzip.nii.gz").write_bytes(gzip.decompress(_real_or_synthetic_gz(f, d)))  # plain .nii behind .gz
    return f / "not_gzip.nii.gz"


def _zero_bytes(f, d):
    (f / "zero_bytes.nii.gz").write_bytes(b"")
    return f / "zero_bytes.nii.gz"


def _wrong_magic(f, d):
    p = _save(f / "wrong_magic.nii", _volume())
    raw = bytearray(p.read_bytes())
    raw[344:348] = b"xyz\0"
    p.write_bytes(bytes(raw))
    return p


def _huge_dims(f, d):
    return _patched_header(f / "huge_dims.nii", _volume()[:4, :4, :4], dim=[3, 4000, 4000, 4000, 1, 1, 1, 1])


CORPUS: dict[str, tuple[Writer, tuple[str, ...]]] = {
    "truncated gzip": (_truncated, ("truncated",)),
    "plain .nii named .nii.gz": (_not_gzip, ("NIfTI",)),
    "zero-byte file": (_zero_bytes, ("empty",)),
    "wrong magic": (_wrong_magic, ("NIfTI",)),
    "2D image": (lambda f, d: _save(f / "two_d.nii.gz", _volume()[:, :, 0]), ("3D",)),
    "flat 3D (one slice)": (lambda f, d: _save(f / "flat.nii.gz", _volume()[:, :, :1]), ("not a 3D volume",)),
    "4D with 3 channels for a 1-channel model": (
        lambda f, d: _save(f / "four_d.nii.gz", np.stack([_volume(i) for i in range(3)], -1)),
        ("3 channel(s)",),
    ),
    "5D image": (lambda f, d: _save(f / "five_d.nii.gz", _volume()[..., None, None].repeat(2, -1)), ("dimensions",)),
    "NaN voxels": (lambda f, d: _save(f / "nan.nii.gz", np.where(_volume() > 130, np.nan, _volume())), ("NaN",)),
    "Inf voxels": (lambda f, d: _save(f / "inf.nii.gz", np.where(_volume() > 140, np.inf, _volume())), ("Inf",)),
    "constant image": (lambda f, d: _save(f / "constant.nii.gz", np.full(SHAPE, 7.0, np.float32)), ("constant",)),
    "zero spacing": (
        lambda f, d: _patched_header(
            f / "zero_spacing.nii", _volume(), qform_code=0, sform_code=1, srow_y=[0.0, 0.0, 0.0, 0.0]
        ),  # fmt: skip
        ("singular",),
    ),
    "absurd spacing (500 mm)": (
        lambda f, d: _save(f / "absurd_spacing.nii.gz", _volume(), np.diag([500.0, 500.0, 500.0, 1.0])),
        ("spacing is probably wrong",),
    ),
    "non-finite affine": (
        lambda f, d: _patched_header(
            f / "nan_affine.nii", _volume(), qform_code=0, sform_code=1, srow_x=[np.nan, 0, 0, 0]
        ),  # fmt: skip
        ("non-finite",),
    ),
    "huge declared dimensions, tiny file": (_huge_dims, ("voxels",)),
}


def write_corpus(folder: Path, data_dir: Path | None = None) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Write every corpus file into ``folder``; returns ``{kind: (path, words its error must contain)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {kind: (write(folder, data_dir), words) for kind, (write, words) in CORPUS.items()}
