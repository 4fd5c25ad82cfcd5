"""Datalists: MSD ``dataset.json`` reading, case ids, folds and label fractions.

An item is a dict ``{"image": path | [paths], "label": path (optional), "case": id}`` with absolute paths, the
format MONAI's dictionary transforms and MONAI Label use. Folds come from ``splits.json`` beside
``dataset.json`` when present (``{"folds": [[case ids], ...]}``), otherwise from a seeded shuffle.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from volmae.errors import DataError

__all__ = [
    "Datalist",
    "load_msd_datalist",
    "case_id",
    "make_folds",
    "split_fold",
    "label_fraction",
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
    return Datalist(items, labels, modality, str(meta.get("name", root.name)), root, unlabeled, splits)


def make_folds(cases: Sequence[str], n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """Deal a seeded shuffle of ``cases`` into ``n_folds`` folds (sizes differ by at most one)."""
    if n_folds < 2 or n_folds > len(cases):
        raise DataError(f"n_folds={n_folds}: need 2 <= n_folds <= number of cases ({len(cases)})")
    order = sorted(cases)
    random.Random(seed).shuffle(order)
    return [order[i::n_folds] for i in range(n_folds)]


def split_fold(datalist: Datalist, fold: int, n_folds: int = 5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train items, held-out items)`` for ``fold``; uses the folder's ``splits.json`` when it has one."""
    folds = datalist.splits or make_folds([it["case"] for it in datalist.items], n_folds, seed)
    if not 0 <= fold < len(folds):
        raise DataError(f"fold={fold}: the datalist has folds 0..{len(folds) - 1}")
    held = set(folds[fold])
    val = [it for it in datalist.items if it["case"] in held]
    train = [it for it in datalist.items if it["case"] not in held]
    if not val or not train:
        raise DataError(f"fold {fold} leaves {len(train)} training and {len(val)} held-out cases")
    return train, val


def label_fraction(items: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """A seeded subset with ``round(fraction * n)`` items (at least 1), the same subset for the same seed."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"label fraction {fraction}: must be in (0, 1]")
    n = max(1, round(fraction * len(items)))
    order = sorted(range(len(items)), key=lambda i: items[i]["case"])
    random.Random(seed).shuffle(order)
    keep = sorted(order[:n])
    return [items[i] for i in keep]


def pretraining_items(datalist: Datalist, fold: int | None = 0, include_unlabeled: bool = True) -> list[dict]:
    """``[{"image", "case"}]`` for self-supervised pretraining (labels unused): the training side of ``fold`` (every
    labeled case when ``fold`` is None, so the held-out fold's images stay unseen otherwise), plus the unlabeled
    ``test`` images when ``include_unlabeled``."""
    items = split_fold(datalist, fold)[0] if fold is not None else list(datalist.items)
    items = [{"image": it["image"], "case": it["case"]} for it in items]
    return items + list(datalist.unlabeled) if include_unlabeled else items
