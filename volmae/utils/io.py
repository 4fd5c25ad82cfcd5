"""Atomic writes: a crash (or SIGKILL) mid-write never leaves a truncated checkpoint, report or prediction.

Write to a temporary file in the destination folder, flush + fsync, then ``os.replace`` (atomic on POSIX), then
fsync the folder so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_write",
    "atomic_save",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_nifti",
    "plain",
    "config_yaml",
    "sha256_file",
]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions a plain open() would
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync it, and rename it over ``path`` in one atomic step."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` made atomic."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _strict(obj: Any) -> Any:
    """NaN / inf floats -> ``None`` (JSON ``null``), so strict JSON parsers accept the file."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (undefined numbers such as an HD95 with an empty mask are written as ``null``)."""
    text = json.dumps(_strict(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_save_nifti(array, affine, path: str | os.PathLike, dtype=None) -> Path:
    """Write a volume as (gzip-compressed when the name ends in ``.gz``) NIfTI, atomically.

    Label maps are stored as ``uint8`` when they fit (else ``int16``) unless ``dtype`` is given.
    """
    import nibabel as nib
    import numpy as np

    arr = np.asarray(array)
    if dtype is None and not np.issubdtype(arr.dtype, np.floating):
        dtype = np.uint8 if arr.size == 0 or (arr.min() >= 0 and arr.max() < 256) else np.int16
    img = nib.Nifti1Image(arr.astype(dtype) if dtype is not None else arr, np.asarray(affine, dtype=float))
    raw = img.to_bytes()
    data = gzip.compress(raw, compresslevel=4) if str(path).endswith(".gz") else raw
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def plain(obj: Any) -> Any:
    """A dataclass / dict as YAML- and JSON-friendly builtins (tuples become lists, recursively)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def config_yaml(obj: Any) -> str:
    """YAML text of a config dataclass (or dict of them), for the ``config.yaml`` every run writes."""
    import yaml

    return yaml.safe_dump(plain(obj), sort_keys=False)
