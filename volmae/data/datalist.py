"""Datalists: MSD ``dataset.json`` reading, image-only lists for pretraining, case ids, folds and label fractions.

An item is a dict ``{"image": path | [paths], "label": path (optional), "case": id}`` with absolute paths, the
format MONAI's dictionary transforms and MONAI Label use. Folds come from ``splits.json`` beside
``dataset.json`` when present (``{"folds": [[case ids], ...]}``), otherwise from a seeded shuffle.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from volmae.data.regions import check_regions
from volmae.errors import DataError

__all__ = [
    "Datalist",
    "load_datalist",
    "load_image_list",
    "load_msd_datalist",
    "case_id",
    "make_folds",
    "dataset_folds",
    "split_fold",
    "inner_fold",
    "label_fraction",
    "split_validation",
    "pretraining_items",
]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_id(path: str | Path | Sequence[str | Path]) -> str:
    """A file-system-safe case id from an image path (``.../hippocampus_001.nii.gz`` -> ``hippocampus_001``).

    Only ``[A-Za-z0-9._-]`` survive, so an id can never climb out of an output folder (no ``/`` or ``..`` path).
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    name = Path(str(path)).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = _SAFE.sub("_", name).strip("._") or "case"
    return name


@dataclass
class Datalist:
    """A task's cases plus what the ``dataset.json`` declares about them."""

    items: list[dict]
    labels: dict[int, str] = field(default_factory=dict)
    modality: dict[int, str] = field(default_factory=dict)
    name: str = ""
    root: Path | None = None
    unlabeled: list[dict] = field(default_factory=list)
    splits: list[list[str]] | None = None
    # {case: label values annotated in it}, for partially annotated tasks (``dataset.json`` "labels_present", e.g.
    # 3D-IRCADb, whose cases mask different organs): a class not annotated in a case is not scored there, since
    # the organ may be in the image, unmasked. Kept out of the items, which MONAI's collate would batch.
    annotated: dict[str, list[int]] = field(default_factory=dict)
    # ``dataset.json`` "regions" ({name: label values}, BraTS TC / WT / ET): what the task is scored on, whichever
    # way a model was trained (sigmoid regions, or softmax labels whose map is then cut into the regions)
    regions: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes including background (``max label + 1``)."""
        return max(self.labels) + 1 if self.labels else 0

    @property
    def in_channels(self) -> int:
        return max(1, len(self.modality))

    def by_case(self, cases: Sequence[str]) -> list[dict]:
        index = {it["case"]: it for it in self.items}
        missing = [c for c in cases if c not in index]
        if missing:
            raise DataError(f"cases not in the datalist: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        return [index[c] for c in cases]


def _resolve(root: Path, rel: str | list[str]) -> str | list[str]:
    if isinstance(rel, list):
        return [str((root / r).resolve()) for r in rel]
    return str((root / rel).resolve())


def load_msd_datalist(dataset_dir: str | Path, dataset_json: str = "dataset.json") -> Datalist:
    """Read an MSD-layout task folder (``dataset.json``, ``imagesTr``, ``labelsTr``, optional ``splits.json``)."""
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    meta_path = root / dataset_json
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no {dataset_json} in the dataset folder (expected the MSD layout)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from None
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{meta_path}: no 'training' list")
    items = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"{meta_path}: training entry {i} has no 'image'")
        item = {"image": _resolve(root, entry["image"]), "case": case_id(entry["image"])}
        if entry.get("label"):
            item["label"] = _resolve(root, entry["label"])
        items.append(item)
    if not items:
        raise DataError(f"{meta_path}: the 'training' list is empty")
    dup = {c for c, n in Counter(it["case"] for it in items).items() if n > 1}
    if dup:
        raise DataError(f"{meta_path}: duplicate case ids {sorted(dup)[:5]}")
    for i, e in enumerate(meta.get("test", [])):
        if isinstance(e, dict) and "image" not in e:
            raise DataError(f"{meta_path}: test entry {i} has no 'image'")
    unlabeled = [
        {
            "image": _resolve(root, e if isinstance(e, str) else e["image"]),
            "case": case_id(e if isinstance(e, str) else e["image"]),
        }
        for e in meta.get("test", [])
        if isinstance(e, (str, dict))
    ]
    try:
        labels = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
        modality = {int(k): str(v) for k, v in meta.get("modality", {}).items()}
    except (ValueError, AttributeError) as e:
        raise DataError(f"{meta_path}: 'labels' / 'modality' must map integer strings to names ({e})") from None
    splits = None
    split_path = root / "splits.json"
    if split_path.is_file():
        try:
            splits = json.loads(split_path.read_text()).get("folds")
        except (json.JSONDecodeError, AttributeError) as e:
            raise DataError(f"{split_path}: not a valid splits file ({e})") from None
    annotated = _annotated(meta.get("labels_present"), {it["case"] for it in items}, meta_path)
    regions = {}
    if meta.get("regions"):
        try:
            regions = dict(zip(meta["regions"], check_regions(meta["regions"])))
        except (ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{meta_path}: 'regions': {e}") from None
    name = str(meta.get("name", root.name))
    return Datalist(items, labels, modality, name, root, unlabeled, splits, annotated, regions)


def _annotated(present, cases: set[str], meta_path: Path) -> dict[str, list[int]]:
    """``dataset.json`` "labels_present" ({case: [label values]}) checked: known cases, integer labels."""
    if present is None:
        return {}
    try:
        out = {str(c): sorted(int(v) for v in values) for c, values in present.items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise DataError(f"{meta_path}: 'labels_present' must map case ids to lists of label values ({e})") from None
    unknown = sorted(set(out) - cases)
    if unknown:
        raise DataError(f"{meta_path}: 'labels_present' names cases not in 'training': {unknown[:5]}")
    return out


IMAGE_SUFFIXES = (".nii.gz", ".nii")


def load_datalist(source: str | Path) -> Datalist:
    """What ``--dataset-dir`` names: an MSD task folder (with ``dataset.json``), or for pretraining an image-only
    list (:func:`load_image_list`): a ``.txt`` / ``.csv`` / ``.json`` file, or a folder of NIfTI images."""
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "dataset.json").is_file() and _has_images(path):
        return load_image_list(path)
    if path.is_file():
        return load_msd_datalist(path.parent) if path.name == "dataset.json" else load_image_list(path)
    return load_msd_datalist(path)


def _has_images(folder: Path) -> bool:
    return any(True for _ in _walk_images(folder))


def _walk_images(folder: Path):
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_SUFFIXES):
                yield Path(dirpath) / f


def _list_entries(path: Path) -> list[str | list[str] | tuple[str | list[str], str]]:
    """The image entries of a list file: one path per line (``.txt``; ``#`` comments), an ``image`` column (or
    the first column) of a ``.csv``, or a JSON list of paths / ``{"image": ...}`` (also under ``training`` /
    ``test`` / ``unlabeled``, MONAI's datalist keys); a JSON entry with a ``case`` too gives ``(image, case)``."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the image list ({e})") from None
    if suffix == ".json":
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if isinstance(meta, dict):
            meta = [e for key in ("training", "unlabeled", "test") for e in meta.get(key, [])]
        if not isinstance(meta, list):
            raise DataError(f"{path}: expected a list of images or a MONAI datalist with 'training' / 'test'")
        entries = []
        for i, e in enumerate(meta):
            image = e.get("image") if isinstance(e, dict) else e
            if not isinstance(image, (str, list)):
                raise DataError(f"{path}: entry {i} names no image ({e!r})")
            case = e.get("case") if isinstance(e, dict) else None
            entries.append((image, str(case)) if case is not None else image)
        return entries
    if suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        col = rows[0].index("image") if "image" in rows[0] else 0
        body = rows[1:] if "image" in rows[0] else rows
        return [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_image_list(source: str | Path) -> Datalist:
    """An image-only datalist for self-supervised pretraining, of any size (10k+ volumes: entries are only paths
    until a loader reads them; pair it with ``cache="disk"``).

    ``source``: a folder (every ``.nii`` / ``.nii.gz`` below it) or a list file (see :func:`_list_entries`; relative
    paths are relative to the file). Case ids come from the path relative to the list's folder, so that
    ``patient1/ct.nii.gz`` and ``patient2/ct.nii.gz`` stay distinct, or from a JSON entry's ``case``. An entry may
    be a list of paths (the channels of one case). The images land in :attr:`Datalist.unlabeled`; ``items`` is
    empty (nothing to fine-tune on).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        root, entries = path, [str(p) for p in _walk_images(path)]
    elif path.is_file():
        root, entries = path.parent, _list_entries(path)
    else:
        raise DataError(f"{path}: no such image list or folder")
    if not entries:
        raise DataError(f"{path}: the image list is empty (no .nii / .nii.gz images)")
    images, seen = [], {}
    for entry in entries:
        entry, given = entry if isinstance(entry, tuple) else (entry, None)
        image = _resolve(root, entry)
        first = Path(image[0] if isinstance(image, list) else image)
        try:
            rel = first.relative_to(root.resolve())
        except ValueError:
            rel = Path(first.name)
        case = given or case_id("_".join(rel.parts))
        if case in seen:
            raise DataError(f"{path}: {first} and {seen[case]} give the same case id {case!r}; rename one")
        seen[case] = first
        images.append({"image": image, "case": case})
    channels = len(images[0]["image"]) if isinstance(images[0]["image"], list) else 1
    modality = {i: f"image{i}" if channels > 1 else "image" for i in range(channels)}
    return Datalist([], {}, modality, path.stem, root, images, None)


def make_folds(cases: Sequence[str], n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """Deal a seeded shuffle of ``cases`` into ``n_folds`` folds (sizes differ by at most one)."""
    if n_folds < 2 or n_folds > len(cases):
        raise DataError(f"n_folds={n_folds}: need 2 <= n_folds <= number of cases ({len(cases)})")
    order = sorted(cases)
    random.Random(seed).shuffle(order)
    return [order[i::n_folds] for i in range(n_folds)]


def dataset_folds(datalist: Datalist, n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """The case ids of each fold: the folder's ``splits.json`` when it has one, else :func:`make_folds`."""
    cases = [it["case"] for it in datalist.items]
    if not datalist.splits and len(cases) < n_folds:
        raise DataError(
            f"{datalist.root or datalist.name}: {len(cases)} cases are too few for the default {n_folds}-fold split; "
            'write a splits.json beside dataset.json, e.g. {"folds": [["case_a"], ["case_b"], ...]}'
        )
    return datalist.splits or make_folds(cases, n_folds, seed)


def split_fold(datalist: Datalist, fold: int, n_folds: int = 5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train items, held-out items)`` for ``fold``; uses the folder's ``splits.json`` when it has one."""
    folds = dataset_folds(datalist, n_folds, seed)
    if not 0 <= fold < len(folds):
        raise DataError(f"fold={fold}: the datalist has folds 0..{len(folds) - 1}")
    held = set(folds[fold])
    val = [it for it in datalist.items if it["case"] in held]
    train = [it for it in datalist.items if it["case"] not in held]
    if not val or not train:
        raise DataError(f"fold {fold} leaves {len(train)} training and {len(val)} held-out cases")
    return train, val


def inner_fold(datalist: Datalist, fold: int, inner: int) -> tuple[list[dict], list[dict]]:
    """``(train items, validation items)`` inside fold ``fold``'s training side: fold ``inner`` is the validation,
    the other training folds the training; fold ``fold``'s held-out cases are in neither."""
    if inner == fold:
        raise DataError(f"inner fold {inner} is the held-out fold {fold}; choose another training fold")
    train_side, _ = split_fold(datalist, fold)
    folds = dataset_folds(datalist)
    if not 0 <= inner < len(folds):
        raise DataError(f"inner fold {inner}: the datalist has folds 0..{len(folds) - 1}")
    held = set(folds[inner])
    return [it for it in train_side if it["case"] not in held], [it for it in train_side if it["case"] in held]


def label_fraction(items: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """A seeded subset with ``round(fraction * n)`` items (at least 1), the same subset for the same seed."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"label fraction {fraction}: must be in (0, 1]")
    n = max(1, round(fraction * len(items)))
    order = sorted(range(len(items)), key=lambda i: items[i]["case"])
    random.Random(seed).shuffle(order)
    keep = sorted(order[:n])
    return [items[i] for i in keep]


def split_validation(items: Sequence[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(training, validation)``: a seeded ``round(fraction * n)`` of ``items`` (at least 1) set aside for
    validation and model selection, so that no model is ever picked on the held-out fold. ``fraction`` 0: nothing
    set aside."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction {fraction}: must be in [0, 1)")
    if fraction == 0.0:
        return list(items), []
    n = max(1, round(fraction * len(items)))
    if len(items) - n < 1:
        raise DataError(
            f"{len(items)} labeled training case(s) are too few to set {n} aside for validation; "
            "validate less often (val_every 0) or set none aside (val_fraction 0)"
        )
    order = sorted(range(len(items)), key=lambda i: items[i]["case"])
    random.Random(f"validation {seed}").shuffle(order)
    held = set(order[:n])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def pretraining_items(datalist: Datalist, fold: int | None = 0, include_unlabeled: bool = True) -> list[dict]:
    """``[{"image", "case"}]`` for self-supervised pretraining (labels unused): the training side of ``fold`` (every
    labeled case when ``fold`` is None, so the held-out fold's images stay unseen otherwise), plus the unlabeled
    ``test`` images when ``include_unlabeled``. An image-only list (:func:`load_image_list`) gives all its images."""
    if not datalist.items:
        return list(datalist.unlabeled)
    items = split_fold(datalist, fold)[0] if fold is not None else list(datalist.items)
    items = [{"image": it["image"], "case": it["case"]} for it in items]
    return items + list(datalist.unlabeled) if include_unlabeled else items
