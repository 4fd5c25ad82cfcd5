"""Input checks that turn bad data into one clear :class:`~volmae.errors.DataError` naming the file and the problem.

Two levels: :func:`preflight` reads headers only (fast; runs before any training starts, so a bad case found at
step 10,000 cannot cost a run), and :class:`CheckVolumed` checks the voxels right after loading (NaN/Inf,
label values, image/label agreement) inside the MONAI pipeline, so cached datasets check each case once.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from volmae.data.readers import MAX_VOXELS, is_dicom_dir, open_nifti
from volmae.errors import DataError

__all__ = ["preflight", "check_item", "CheckVolumed", "check_image_array", "check_label_array"]

AFFINE_TOL = 1e-3  # mm / direction-cosine tolerance for "same grid"


def _paths(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _header(path: str) -> tuple[tuple[int, ...], np.ndarray] | None:
    """``(shape, affine)`` from the header only; ``None`` for DICOM folders (checked when loaded)."""
    p = Path(path)
    if is_dicom_dir(p):
        return None
    img = open_nifti(p)
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=float)


def check_item(
    item: Mapping,
    in_channels: int | None = None,
    need_label: bool = True,
    target_spacing: Sequence[float] | None = None,
) -> None:
    """Header-level check of one datalist item (image channel files, optional label); raises a ``DataError``
    naming the file and the problem. With ``target_spacing`` (the preprocessing's mm per voxel), an image whose
    header spacing would make the resampled grid larger than :data:`~volmae.data.readers.MAX_VOXELS` is refused
    before anything is allocated (a spacing of 100 mm where 1 mm was meant turns 35 x 50 x 35 voxels into
    3500 x 5000 x 3500)."""
    images = _paths(item["image"])
    headers = [(p, _header(p)) for p in images]
    ref = None
    for p, hdr in headers:
        if hdr is None:
            continue
        shape, affine = hdr
        squeezed = tuple(s for i, s in enumerate(shape) if i < 3 or s != 1)
        if len(squeezed) not in (3, 4) or any(s != 1 for s in shape[4:]):  # channels only in the 4th dimension
            raise DataError(
                f"{p}: image has {len(shape)} dimensions {shape}; expected a 3D volume (or 3D x channels in the "
                "4th dimension)"
            )
        if min(squeezed[:3]) < 2:
            raise DataError(f"{p}: image shape {shape} is not a 3D volume (an axis has size 1)")
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise DataError(f"{p}: singular or non-finite affine (voxel spacing 0 or a corrupt header)")
        if target_spacing is not None:
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            grid = [int(np.ceil(n * s / t)) for n, s, t in zip(squeezed[:3], spacing, target_spacing)]
            if math.prod(grid) > MAX_VOXELS:
                raise DataError(
                    f"{p}: voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm resampled to "
                    f"{tuple(target_spacing)} mm gives a {' x '.join(map(str, grid))} grid (more than "
                    f"{MAX_VOXELS:,} voxels); the header's spacing is probably wrong"
                )
        if ref is None:
            ref = (p, squeezed[:3], affine)
        elif squeezed[:3] != ref[1] or not np.allclose(affine, ref[2], atol=AFFINE_TOL):
            raise DataError(f"{p}: channel file grid {squeezed[:3]} differs from {ref[0]} ({ref[1]})")
    if in_channels is not None and ref is not None:
        first = headers[0][1]
        n = len(images) if len(images) > 1 else (first[0][3] if first and len(first[0]) > 3 else 1)
        if n != in_channels:
            raise DataError(f"{images[0]}: has {n} channel(s), the task expects {in_channels}")
    label = item.get("label")
    if label is None:
        if need_label:
            raise DataError(f"{images[0]}: no label given for this case")
        return
    hdr = _header(str(label))
    if hdr is None or ref is None:
        return
    shape, affine = hdr
    if (
        tuple(s for s in shape if s != 1)[:3] != tuple(s for s in ref[1] if s != 1)
        or len([s for s in shape if s != 1]) > 3
    ):
        raise DataError(f"{label}: label shape {shape} does not match image shape {ref[1]} ({ref[0]})")
    if not np.allclose(affine, ref[2], atol=AFFINE_TOL):
        raise DataError(
            f"{label}: label affine differs from its image's ({ref[0]}); they are not on the same voxel grid"
        )


def preflight(
    items: Sequence[Mapping],
    in_channels: int | None = None,
    need_label: bool = True,
    what: str = "datalist",
    target_spacing: Sequence[float] | None = None,
) -> None:
    """Header-level check of every item (:func:`check_item`); raises one ``DataError`` listing up to 10 problems."""
    if not items:
        raise DataError(f"the {what} is empty: no cases to use")
    problems = []
    for item in items:
        if "image" not in item:
            problems.append(f"an item has no 'image' key: {dict(item)}")
            continue
        try:
            check_item(item, in_channels, need_label, target_spacing)
        except DataError as e:
            problems.append(str(e))
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} problem(s) in the {what}:\n  " + "\n  ".join(problems[:10]) + more)


def check_image_array(arr: np.ndarray | torch.Tensor, name: str) -> None:
    """Raise on NaN/Inf voxels or a constant image (nothing to learn or normalise)."""
    t = torch.as_tensor(arr)
    if t.is_floating_point():
        bad = (~torch.isfinite(t)).sum().item()
        if bad:
            raise DataError(f"{name}: image has {bad} NaN/Inf voxel(s)")
    if t.numel() and bool((t == t.reshape(-1)[0]).all()):
        raise DataError(f"{name}: image is constant (every voxel = {t.reshape(-1)[0].item()})")


def check_label_array(arr: np.ndarray | torch.Tensor, name: str, num_classes: int | None) -> torch.Tensor:
    """Raise on non-integral / out-of-range labels; return the label as an integral-valued tensor."""
    t = torch.as_tensor(arr)
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise DataError(f"{name}: label map has NaN/Inf values")
        r = t.round()
        if (r - t).abs().max().item() > 1e-3:
            raise DataError(f"{name}: label map has non-integer values (is it an image or a probability map?)")
        t = r
    values = torch.unique(t)
    if values.numel() and values.min().item() < 0:
        raise DataError(f"{name}: label map has negative values {values[values < 0].tolist()[:5]}")
    if num_classes is not None:
        extra = values[values >= num_classes].tolist()
        if extra:
            raise DataError(
                f"{name}: label values {[int(v) for v in extra[:8]]} are outside the declared classes "
                f"0..{num_classes - 1}"
            )
    return t


class CheckVolumed(MapTransform):
    """Check loaded image/label voxels (place right after ``LoadImaged``).

    Image: finite and not constant, with ``in_channels`` channels when that is given. Label: integral values in
    ``0..num_classes-1`` (float label files are rounded, so float32 labels with 0.9999 values behave), spatial shape
    equal to the image's, and, when the item carries ``annotated`` (a ``C`` bool mask of the classes its case
    annotates, from ``labels_present``), no value outside those classes.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        num_classes: int | None = None,
        allow_missing_keys: bool = True,
        in_channels: int | None = None,
    ) -> None:
        keys: KeysCollection = [image_key] + ([label_key] if label_key else [])
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_key, self.num_classes = image_key, label_key, num_classes
        self.in_channels = in_channels

    @staticmethod
    def _name(d: Mapping, key: Hashable) -> str:
        meta = getattr(d[key], "meta", {})
        return str(meta.get("filename_or_obj", key))

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        img = d[self.image_key]
        check_image_array(img, self._name(d, self.image_key))
        if self.in_channels is not None and img.shape[0] != self.in_channels:
            raise DataError(
                f"{self._name(d, self.image_key)}: image has {img.shape[0]} channel(s), the model expects "
                f"{self.in_channels} (give one file per channel, in the order of the task's modalities)"
            )
        if self.label_key and self.label_key in d:
            lab = d[self.label_key]
            name = self._name(d, self.label_key)
            values = check_label_array(lab, name, self.num_classes)
            if tuple(lab.shape[1:]) != tuple(img.shape[1:]):
                raise DataError(
                    f"{name}: label shape {tuple(lab.shape[1:])} does not match image shape {tuple(img.shape[1:])}"
                )
            if "annotated" in d:
                found = {int(v) for v in values.unique().tolist()}
                extra = sorted(v for v in found if v >= len(d["annotated"]) or not d["annotated"][v])
                if extra:
                    raise DataError(f"{name}: label values {extra} are not in the case's labels_present (dataset.json)")
            d[self.label_key] = values  # rounded when it was stored as float (MetaTensor meta kept)
        return d
