"""Converters from public datasets as distributed to the MSD layout volmae (and MONAI's bundles) read.

- :func:`convert_btcv`: BTCV / Synapse multi-atlas abdomen (``RawData/Training/img/img0001.nii.gz`` + ``label/``,
  optional ``RawData/Testing/img``) -> ``imagesTr`` / ``labelsTr`` / ``imagesTs`` + ``dataset.json`` (13 organs) +
  ``splits.json`` whose fold 0 is the standard 24 / 6 split of UNETR and SelfMedMAE (validation img0035-img0040;
  folds 1-4 deal the 24 training cases into cross-validation folds).
- :func:`convert_brats`: BraTS per-modality files (2021: ``BraTS2021_00000_flair.nii.gz`` ...; 2023:
  ``BraTS-GLI-00000-000-t2f.nii.gz`` ...; the BraTS 2013 FLAIR + T1c cases of DeepMedic's examples) -> one
  multi-channel NIfTI per case (channels last, MSD Task01 order) and labels remapped to MSD Task01's convention:
  1 edema, 2 non-enhancing tumour core (necrosis included), 3 enhancing tumour; so tumour core = {2, 3},
  whole tumour = {1, 2, 3}, enhancing = {3} (``dataset.json`` records these regions). A layout whose background is
  not 0 (DeepMedic's) is masked with its brain masks (:class:`BratsLayout`).

Both check every pair before writing (headers: dimensions, shapes, affines), write each output file atomically,
never replace an existing file unless ``overwrite=True``, and write ``dataset.json`` last, so an interrupted
conversion never looks complete. MONAI has no converters for these layouts (``DecathlonDataset`` only downloads
the MSD tasks), hence ours.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volmae.data.checks import check_label_array, preflight
from volmae.data.datalist import case_id, make_folds
from volmae.data.readers import NIFTI_SUFFIXES, open_nifti
from volmae.errors import DataError
from volmae.utils.io import atomic_save_nifti, atomic_write, atomic_write_json

__all__ = [
    "BTCV_LABELS",
    "BTCV_VALIDATION",
    "BRATS_LABELS",
    "BRATS_REGIONS",
    "BratsLayout",
    "BRATS_LAYOUTS",
    "convert_btcv",
    "convert_brats",
    "TOTALSEG_TO_BTCV",
    "totalseg_to_btcv",
]

BTCV_LABELS = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
# The validation half of UNETR's / SelfMedMAE's ``dataset_0.json``; the other 24 labeled cases train.
BTCV_VALIDATION = [f"img{i:04d}" for i in range(35, 41)]

# TotalSegmentator v2 ``total`` task value -> BTCV value, for the 13 BTCV organs (names in TotalSegmentator's
# ``map_to_binary.class_map``: 15 esophagus, 52 aorta, 63 inferior_vena_cava, 64 portal_vein_and_splenic_vein ...).
# Every other TotalSegmentator class becomes background.
TOTALSEG_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}

BRATS_LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"}
BRATS_REGIONS = {"TC": [2, 3], "WT": [1, 2, 3], "ET": [3]}

_BTCV_FILE = re.compile(r"^(img|label)(\d+)\.nii(\.gz)?$")


def _check_dst(dst: Path, names: Sequence[str], overwrite: bool) -> None:
    clash = [n for n in names if (dst / n).exists()]
    if clash and not overwrite:
        raise DataError(
            f"{dst}: {clash[0]} (and {len(clash) - 1} more) already exist; pass overwrite=True (--overwrite)"
        )


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _btcv_dirs(src: Path) -> tuple[Path, Path, Path | None]:
    """``(img dir, label dir, test img dir or None)`` under ``src`` (the download, ``RawData`` or ``Training``)."""
    for base in (src / "RawData" / "Training", src / "Training", src):
        if (base / "img").is_dir() and (base / "label").is_dir():
            test = base.parent / "Testing" / "img"
            return base / "img", base / "label", test if test.is_dir() else None
    raise DataError(f"{src}: no BTCV 'RawData/Training/img' and 'label' folders here")


def _ext(p: Path) -> str:
    return ".nii.gz" if p.name.endswith(".gz") else ".nii"


def _numbered(folder: Path, kind: str) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        m = _BTCV_FILE.match(p.name)
        if m and m.group(1) == kind:
            out[m.group(2)] = p
    return out


def convert_btcv(src: str | Path, dst: str | Path, overwrite: bool = False) -> dict:
    """Convert a BTCV download to the MSD layout in ``dst``; returns the ``dataset.json`` written."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    img_dir, lab_dir, test_dir = _btcv_dirs(src)
    images, labels = _numbered(img_dir, "img"), _numbered(lab_dir, "label")
    if not images:
        raise DataError(f"{img_dir}: no imgNNNN.nii.gz files")
    unpaired = sorted(set(images) ^ set(labels))
    if unpaired:
        n = unpaired[0]
        which = f"{images[n]} has no label{n}" if n in images else f"{labels[n]} has no img{n}"
        raise DataError(f"{which} ({len(unpaired)} unpaired file(s) in total)")
    tests = _numbered(test_dir, "img") if test_dir else {}
    preflight([{"image": str(images[n]), "label": str(labels[n])} for n in images], 1, True, "BTCV training set")
    if tests:
        preflight([{"image": str(p)} for p in tests.values()], 1, False, "BTCV test set")

    plan = {f"imagesTr/img{n}{_ext(p)}": p for n, p in images.items()}
    plan |= {f"labelsTr/label{n}{_ext(p)}": p for n, p in labels.items()}
    plan |= {f"imagesTs/img{n}{_ext(p)}": p for n, p in tests.items()}
    _check_dst(dst, [*plan, "dataset.json", "splits.json"], overwrite)
    for rel, p in plan.items():
        _copy(p, dst / rel)

    training = [
        {"image": f"./imagesTr/img{n}{_ext(images[n])}", "label": f"./labelsTr/label{n}{_ext(labels[n])}"}
        for n in images
    ]
    cases = [case_id(t["image"]) for t in training]
    val = [c for c in BTCV_VALIDATION if c in cases]
    rest = [c for c in cases if c not in val]
    folds = [val] + (make_folds(rest, 4, seed=0) if val and len(rest) >= 4 else [])
    if val:
        atomic_write_json(
            dst / "splits.json",
            {"_how": "fold 0: the standard BTCV 24/6 split (validation img0035-0040); folds 1-4: the other cases "
             "dealt by volmae.data.datalist.make_folds(seed=0)", "folds": folds},
        )  # fmt: skip
    meta = {
        "name": "BTCV",
        "description": "Multi-Atlas Labeling Beyond the Cranial Vault, abdomen (Synapse), converted by volmae",
        "reference": "https://www.synapse.org/#!Synapse:syn3193805/wiki/217752",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": len(training),
        "numTest": len(tests),
        "training": training,
        "test": [f"./imagesTs/img{n}{_ext(p)}" for n, p in tests.items()],
    }
    atomic_write_json(dst / "dataset.json", meta)
    return meta


@dataclass(frozen=True)
class BratsLayout:
    """File naming of one BraTS release: ``channels`` as (MSD modality name, file-name suffix before ``.nii[.gz]``)
    in MSD Task01 order, the label file's suffix, and the map from its label values to MSD Task01's. ``brain_mask``:
    the suffix of a brain mask outside which the images are set to 0, for a release whose images were normalised
    with the background left at a non-zero constant (the official releases are skull-stripped to 0, which the
    ``mri`` preset's non-zero normalisation relies on)."""

    channels: tuple[tuple[str, str], ...]
    seg: str
    remap: Mapping[int, int]
    brain_mask: str | None = None


BRATS_LAYOUTS: dict[str, BratsLayout] = {
    # BraTS 2018-2021: 1 necrotic / non-enhancing core, 2 edema, 4 enhancing.
    "brats2021": BratsLayout(
        (("FLAIR", "_flair"), ("T1w", "_t1"), ("T1gd", "_t1ce"), ("T2w", "_t2")), "_seg", {0: 0, 1: 2, 2: 1, 4: 3}
    ),
    # BraTS 2023 GLI: 1 necrotic core, 2 edema, 3 enhancing.
    "brats2023": BratsLayout(
        (("FLAIR", "-t2f"), ("T1w", "-t1n"), ("T1gd", "-t1c"), ("T2w", "-t2w")), "-seg", {0: 0, 1: 2, 2: 1, 3: 3}
    ),
    # BraTS 2013 as in DeepMedic's examples (FLAIR + T1c only): 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing.
    # Its images are z-scored inside the brain with the air left at a constant (about -3.6), which non-zero
    # normalisation would take for tissue: brainmask.nii.gz sets it back to 0.
    "brats2013-deepmedic": BratsLayout(
        (("FLAIR", "Flair_subtrMeanDivStd"), ("T1gd", "T1c_subtrMeanDivStd")),
        "OTMultiClass",
        {0: 0, 1: 2, 2: 1, 3: 2, 4: 3},
        brain_mask="brainmask",
    ),
}


def _ends_in(p: Path, suffix: str) -> bool:
    """``p`` is a NIfTI file whose name, without ``.nii[.gz]``, ends in ``suffix``."""
    return p.name.endswith(tuple(suffix + ext for ext in NIFTI_SUFFIXES))


def _find(folder: Path, suffix: str) -> Path | None:
    hits = [p for p in folder.iterdir() if _ends_in(p, suffix)]
    if len(hits) > 1:
        raise DataError(f"{folder}: several files end in {suffix!r}: {[h.name for h in hits]}")
    return hits[0] if hits else None


def _nifti_files(src: Path) -> list[Path]:
    """Every ``.nii[.gz]`` under ``src``, following symlinked folders (``Path.rglob`` does not before 3.13)."""
    return sorted(
        Path(d) / f for d, _, files in os.walk(src, followlinks=True) for f in files if f.endswith(NIFTI_SUFFIXES)
    )


def _detect_layout(src: Path, files: Sequence[Path]) -> str:
    for name, lay in BRATS_LAYOUTS.items():
        if any(_ends_in(p, lay.channels[0][1]) for p in files):
            return name
    raise DataError(f"{src}: no BraTS files recognised (layouts: {', '.join(BRATS_LAYOUTS)})")


def _brats_cases(src: Path, files: Sequence[Path], lay: BratsLayout) -> dict[str, dict[str, Path | list[Path] | None]]:
    """``{case id: {"channels": [paths], "seg": path or None}}`` for every folder holding the first channel."""
    folders = sorted({p.parent for p in files if _ends_in(p, lay.channels[0][1])})
    cases: dict[str, dict] = {}
    for f in folders:
        chans = [_find(f, suffix) for _, suffix in lay.channels]
        missing = [name for (name, _), p in zip(lay.channels, chans) if p is None]
        if missing:
            raise DataError(f"{f}: no {' / '.join(missing)} file (expected names ending in the layout's suffixes)")
        cid = case_id(f.name)
        if cid in cases:
            raise DataError(f"{f}: case id {cid!r} appears twice under {src}")
        mask = _find(f, lay.brain_mask) if lay.brain_mask else None
        if lay.brain_mask and mask is None:
            raise DataError(f"{f}: no {lay.brain_mask} file (this layout's images need it: see BratsLayout)")
        cases[cid] = {"channels": chans, "seg": _find(f, lay.seg), "mask": mask}
    return cases


def _stack_channels(case: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """A case's channels as one ``X Y Z C`` float32 array (zero outside its brain mask, when it has one), and the
    affine of its first channel."""
    imgs = [open_nifti(p) for p in case["channels"]]
    stacked = np.stack([np.asarray(i.dataobj, dtype=np.float32).reshape(i.shape[:3]) for i in imgs], axis=-1)
    if not np.isfinite(stacked).all():
        raise DataError(f"{case['channels'][0].parent}: NaN/Inf voxels in the images")
    if case.get("mask") is not None:
        m = open_nifti(case["mask"])
        if tuple(m.shape[:3]) != stacked.shape[:3] or not np.allclose(m.affine, imgs[0].affine, atol=1e-3):
            raise DataError(
                f"{case['mask']}: brain mask grid {tuple(m.shape[:3])} does not match the images' "
                f"{stacked.shape[:3]} (shape or affine)"
            )
        stacked[np.asarray(m.dataobj).reshape(m.shape[:3]) <= 0] = 0.0
    return stacked, imgs[0].affine


def _remap(label: np.ndarray, remap: Mapping[int, int], name: str) -> np.ndarray:
    # float32 holds every label value exactly and spares torch unsigned types it lacks ops for (uint16, uint32)
    values = check_label_array(label.astype(np.float32), name, None)  # NaN / non-integer / negative: named
    extra = sorted(int(v) for v in values.unique().tolist() if int(v) not in remap)
    if extra:
        raise DataError(f"{name}: label values {extra} are not in this BraTS layout ({sorted(remap)})")
    return _lookup(values.numpy().astype(np.int64), remap)


def _lookup(values: np.ndarray, table: Mapping[int, int]) -> np.ndarray:
    """``values`` (non-negative ints) mapped through ``table`` as uint8; values not in the table become 0."""
    lut = np.zeros(max(int(values.max(initial=0)), max(table)) + 1, dtype=np.uint8)
    for k, v in table.items():
        lut[k] = v
    return lut[values]


def totalseg_to_btcv(label: np.ndarray, name: str = "label") -> np.ndarray:
    """A TotalSegmentator ``total`` label map in BTCV numbering (uint8; non-BTCV structures -> 0). For pipeline
    tests on TotalSegmentator's model-made examples; never a substitute for manual BTCV labels."""
    return _lookup(check_label_array(label.astype(np.float32), name, None).numpy().astype(np.int64), TOTALSEG_TO_BTCV)


def convert_brats(src: str | Path, dst: str | Path, layout: str = "auto", overwrite: bool = False) -> dict:
    """Stack each case's modalities and remap its labels into ``dst`` (MSD layout); returns ``dataset.json``.

    Cases without a label file go to ``imagesTs`` and the ``test`` list (unlabeled images, e.g. for pretraining).
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise DataError(f"{src}: BraTS folder not found")
    files = _nifti_files(src)
    name = _detect_layout(src, files) if layout == "auto" else layout
    if name not in BRATS_LAYOUTS:
        raise DataError(f"layout={layout!r}: choose auto or one of {', '.join(BRATS_LAYOUTS)}")
    lay = BRATS_LAYOUTS[name]
    cases = _brats_cases(src, files, lay)
    if not cases:
        raise DataError(f"{src}: no {name} cases found")
    items = [{"image": [str(p) for p in c["channels"]], "label": c["seg"] and str(c["seg"])} for c in cases.values()]
    preflight([{k: v for k, v in it.items() if v} for it in items], len(lay.channels), False, f"{name} cases")
    plan = {
        cid: ("imagesTr" if c["seg"] else "imagesTs", f"{cid}.nii.gz", c["seg"] is not None) for cid, c in cases.items()
    }
    outs = [f"{d}/{f}" for d, f, _ in plan.values()] + [f"labelsTr/{f}" for _, f, lab in plan.values() if lab]
    _check_dst(dst, [*outs, "dataset.json"], overwrite)
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (dst / d).mkdir(parents=True, exist_ok=True)
    for cid, c in cases.items():
        folder, fname, labeled = plan[cid]
        stacked, affine = _stack_channels(c)
        atomic_save_nifti(stacked, affine, dst / folder / fname, dtype=np.float32)
        if labeled:
            seg = open_nifti(c["seg"])
            lab = _remap(np.asarray(seg.dataobj).reshape(seg.shape[:3]), lay.remap, str(c["seg"]))
            atomic_save_nifti(lab, affine, dst / "labelsTr" / fname, dtype=np.uint8)
    meta = {
        "name": "BraTS",
        "description": f"BraTS glioma MRI ({name} layout) converted by volmae: channels stacked, MSD Task01 labels",
        "tensorImageSize": "4D",
        "modality": {str(i): m for i, (m, _) in enumerate(lay.channels)},
        "labels": {str(k): v for k, v in BRATS_LABELS.items()},
        "regions": BRATS_REGIONS,
        "source_layout": name,
        **({"background": f"set to 0 outside each case's {lay.brain_mask} file"} if lay.brain_mask else {}),
        "numTraining": sum(1 for *_, lab in plan.values() if lab),
        "numTest": sum(1 for *_, lab in plan.values() if not lab),
        "training": [{"image": f"./imagesTr/{f}", "label": f"./labelsTr/{f}"} for _, f, lab in plan.values() if lab],
        "test": [f"./imagesTs/{f}" for _, f, lab in plan.values() if not lab],
    }
    atomic_write_json(dst / "dataset.json", meta)
    return meta
