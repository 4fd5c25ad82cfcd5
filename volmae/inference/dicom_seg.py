"""A label map as a DICOM Segmentation object (DICOM-SEG) that references the DICOM series it was made from.

``volmae-infer --output-type dicom_seg`` writes one SEG per DICOM input series: segmentation type BINARY (the kind
PACS viewers, OHIF and 3D Slicer read), one segment per foreground class in label-value order (segment number 1 is
the lowest foreground label value), each segment's label the class name, its algorithm identification volmae, its
version and the model; generic property codes (SNOMED CT "Tissue") since a model's classes carry names, not codes.
Frames with no segmented pixel are left out, as highdicom does by default (all are kept when nothing was found);
each frame references its source image, and the SEG the source series (same study, patient and frame of reference).
The source must carry its identity and geometry tags (:data:`REQUIRED_TAGS`; a missing one is named in the error);
patient and study tags of type 2 that an anonymised series dropped are written empty. The file is written to a
temporary name beside ``path`` and renamed, so it is whole or absent.

Why highdicom rather than pydicom by hand: a SEG is a multi-frame IOD with shared and per-frame functional groups,
a dimension index, derivation and source-image references per frame, bit-packed BINARY pixel data and segment
sequences with coded concepts. highdicom (the Imaging Data Commons' library, used by MONAI Deploy and others)
builds and validates all of that from the source datasets and reads SEGs back (``highdicom.seg.segread``), so the
standard's rules live in one maintained place and not in volmae.

Geometry: the label map is the array volmae's reader gives (``x y z`` = DICOM column, row, slice order after
SimpleITK, RAS affine). Nothing about that order is assumed here: each source slice's pixel ``(row, column)`` is
placed from its own tags (``ImagePositionPatient + column * ColumnSpacing * row cosines + row * RowSpacing *
column cosines``, in LPS), turned into RAS and through the inverse of the label map's affine into a voxel index,
and the frame is gathered from those voxels. A slice that does not fall on the label map's grid (more than a
quarter voxel off, or outside it) is refused. Slices are passed to highdicom sorted along their normal.

Installation: highdicom is an optional extra, ``pip install "volmae[dicom]"`` (it needs pydicom 3, which some tools
used beside volmae, e.g. MONAI Label 0.8.5, do not accept). Without it ``--output-type dicom_seg`` is refused before
anything is read or written (:func:`require_highdicom`); NIfTI output needs nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from volmae.errors import ConfigError, DataError
from volmae.utils.io import atomic_write

__all__ = ["REQUIRED_TAGS", "require_highdicom", "read_source_series", "frames_from_label_map", "write_dicom_seg"]

# What a SEG takes from its source images: study / series / instance identity, frame of reference, plane geometry.
REQUIRED_TAGS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
# Type 2 attributes of the patient and study that a SEG copies from its source: anonymised series often drop them;
# they are then written empty ("unknown"), as the standard allows for type 2.
EMPTY_IF_ABSENT = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
TOLERANCE = 0.25  # voxels: how far off the label map's grid a source pixel may land
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def require_highdicom() -> None:
    """A ``ConfigError`` (one line, how to install it) when highdicom, an optional extra, is not installed:
    ``volmae-infer`` calls this before it reads or writes anything for ``--output-type dicom_seg``."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise ConfigError('--output-type dicom_seg needs highdicom: pip install "volmae[dicom]"') from None


def _normal(ds) -> np.ndarray:
    cos = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(cos[:3], cos[3:])


def read_source_series(series: str | os.PathLike) -> list:
    """The pydicom datasets (headers only) of the DICOM series that ``series`` holds, as volmae's reader finds it,
    sorted by position along the slice normal; a ``DataError`` naming every tag a SEG needs that is missing."""
    import pydicom

    from volmae.data.readers import dicom_series_files

    files = dicom_series_files(series)
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for a damaged file
            raise DataError(f"{f}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    missing = {}
    for tag in REQUIRED_TAGS:
        n = sum(1 for ds in datasets if ds.get(tag) in (None, "", []))
        if n:
            missing[tag] = n
    if missing:
        what = ", ".join(f"{tag} ({n} of {len(datasets)} files)" for tag, n in missing.items())
        raise DataError(f"{series}: cannot write a DICOM-SEG, the series lacks {what}")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise DataError(f"{series}: multi-frame DICOM images are not supported for DICOM-SEG output")
    for ds in datasets:  # these are header copies: the files are only read
        for tag in EMPTY_IF_ABSENT:
            if tag not in ds:
                setattr(ds, tag, "")
    normal = _normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))


def frames_from_label_map(datasets: Sequence, label_map: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(slices, rows, columns)``: the label map resampled onto each source slice's pixels (nearest voxel; see the
    module docstring), in the order of ``datasets``; a ``DataError`` when a slice is off the label map's grid."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"label map of shape {label_map.shape}: expected 3 spatial axes")
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=float))
    linear, shift = to_voxel[:3, :3] @ LPS_TO_RAS, to_voxel[:3, 3]
    bounds = np.array(label_map.shape)[:, None, None]
    frames = []
    for i, ds in enumerate(datasets):
        rows, cols = int(ds.Rows), int(ds.Columns)
        cos = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        origin = linear @ np.asarray(ds.ImagePositionPatient, dtype=float) + shift
        along_row = linear @ (cos[:3] * col_spacing)  # one column further
        along_col = linear @ (cos[3:] * row_spacing)  # one row further
        r, c = np.mgrid[0:rows, 0:cols]
        where = origin[:, None, None] + along_row[:, None, None] * c + along_col[:, None, None] * r  # 3 rows cols
        index = np.rint(where)
        off = float(np.abs(where - index).max())
        if off > TOLERANCE or (index < 0).any() or (index >= bounds).any():
            raise DataError(
                f"slice {i + 1} of the DICOM series (instance {ds.get('InstanceNumber', '?')}) does not lie on the "
                f"label map's grid (shape {label_map.shape}; up to {off:.2f} voxels off, or outside it): the label "
                "map was not made from this series"
            )
        index = index.astype(np.intp)
        frames.append(label_map[index[0], index[1], index[2]])
    return np.stack(frames)


def write_dicom_seg(
    series: str | os.PathLike,
    label_map: np.ndarray,
    affine: np.ndarray,
    labels: Mapping[int, str],
    path: str | os.PathLike,
    model: str = "",
    parameters: Mapping[str, str] | None = None,
    datasets: Sequence | None = None,
) -> Path:
    """Write ``label_map`` (``x y z``, 4x4 RAS ``affine``, as volmae's reader gives the series ``series``) as a
    DICOM-SEG at ``path`` (atomically): one segment per foreground class of ``labels`` (value -> name; 0 is
    background), ``model`` named in the algorithm identification (with ``parameters``). ``datasets``: the series'
    headers from :func:`read_source_series`, when already read."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from volmae import __version__

    sources = list(datasets) if datasets is not None else read_source_series(series)
    frames = frames_from_label_map(sources, label_map, affine)
    foreground = sorted(k for k in labels if k > 0)
    unknown = sorted(set(np.unique(frames).tolist()) - {0, *foreground})
    if unknown:
        raise ValueError(f"label map holds values {unknown} that are not classes of the model ({dict(labels)})")
    lut = np.zeros(max([0, *foreground, *np.unique(frames).tolist()]) + 1, np.uint16)
    lut[foreground] = np.arange(1, len(foreground) + 1)
    pixels = lut[frames].astype(np.uint8 if len(foreground) < 256 else np.uint16)  # label value -> segment number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="volmae",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        source=(model or "volmae model")[:64],
        parameters={"model": model or "unnamed", **dict(parameters or {})},
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=str(labels[k])[:64] or f"class {k}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, k in enumerate(foreground, start=1)
    ]
    if not segments:
        raise ValueError(f"the model has no foreground classes ({dict(labels)}): nothing to write as a DICOM-SEG")
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=_series_number(sources[0]),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="volmae",
            manufacturer_model_name=(model or "volmae model")[:64],
            software_versions=f"volmae {__version__}",
            device_serial_number="none",
            series_description=f"volmae: {model}"[:64] if model else "volmae segmentation",
            content_label="VOLMAE",
            content_description="Segmentation by volmae",
            omit_empty_frames=bool(pixels.any()),  # an empty label map: keep its frames (a SEG needs one)
        )
    except (ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{series}: cannot write a DICOM-SEG from this series ({first})") from None
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def _series_number(source) -> int:
    """The SEG's series number: the source series' plus 1000 (its place among the study's derived series)."""
    try:
        return 1000 + max(int(source.get("SeriesNumber") or 0), 0)
    except (TypeError, ValueError):
        return 1000
