"""Overlapping label regions (BraTS tumour core / whole tumour / enhancing tumour) <-> integer label maps.

Brain-tumour networks are trained on nested *regions* with one sigmoid channel each, while files and MONAI Label
carry a single-channel label map. MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` hard-codes the BraTS 2018
label values (1 / 2 / 4) and has no inverse, so both directions are written here for any region table, e.g. the MSD
Task01 / :data:`volmae.data.convert.BRATS_REGIONS` table ``{"TC": [2, 3], "WT": [1, 2, 3], "ET": [3]}``.

Shapes: label map ``1 D H W`` (or ``D H W``), region masks ``R D H W`` with one channel per region in table order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["check_regions", "labels_to_regions", "regions_to_labels", "LabelToRegionsd", "RegionsToLabeld"]


def check_regions(regions: Mapping[str, Sequence[int]] | Sequence[Sequence[int]]) -> list[list[int]]:
    """The region table as a list of label lists; ``ValueError`` naming the bad entry."""
    items = list(regions.items()) if isinstance(regions, Mapping) else list(enumerate(regions))
    if not items:
        raise ValueError("regions={}: need at least one region")
    out = []
    for name, labels in items:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or not labels:
            raise ValueError(f"region {name!r}={labels!r}: expected a non-empty list of label values")
        if any(int(v) != v or v < 1 for v in labels):
            raise ValueError(f"region {name!r}={list(labels)}: label values must be integers >= 1")
        out.append([int(v) for v in labels])
    return out


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` carrying ``ref``'s metadata and transform history (so ``Invertd`` still works), when ``ref`` has them."""
    if not isinstance(ref, MetaTensor):
        return t
    return MetaTensor(t, meta=dict(ref.meta), applied_operations=list(ref.applied_operations))


def labels_to_regions(label: torch.Tensor, regions) -> torch.Tensor:
    """``1 D H W`` integer label map -> ``R D H W`` float masks, channel r = voxels whose label is in region r."""
    table = check_regions(regions)
    lab = label[0] if label.ndim == 4 else label
    lab = lab.round().long() if lab.is_floating_point() else lab.long()
    masks = torch.stack([torch.isin(lab, torch.tensor(r, device=lab.device)) for r in table]).float()
    return _like(masks, label)


def regions_to_labels(masks: torch.Tensor, regions) -> torch.Tensor:
    """``R D H W`` binary masks -> ``1 D H W`` uint8 label map.

    Each voxel gets the label that the *innermost* switched-on regions agree on: regions are painted from the
    largest (most labels) to the smallest, and a smaller region's voxel takes the label values it does not share with
    the next larger one. For BraTS: WT -> edema (1), TC -> non-enhancing (2), ET -> enhancing (3).
    """
    table = check_regions(regions)
    if masks.shape[0] != len(table):
        raise ValueError(f"masks have {masks.shape[0]} channels for {len(table)} regions")
    order = sorted(range(len(table)), key=lambda r: -len(table[r]))
    out = torch.zeros(masks.shape[1:], dtype=torch.uint8, device=masks.device)
    for i, r in enumerate(order):
        inner = set().union(*(table[o] for o in order[i + 1 :] if set(table[o]) < set(table[r])))
        own = sorted(set(table[r]) - inner) or table[r]
        out[masks[r] > 0.5] = min(own)
    return _like(out[None], masks)


class _Regionsd(MapTransform):
    """Apply ``convert(tensor, regions)`` to each key."""

    convert = staticmethod(labels_to_regions)

    def __init__(self, keys: KeysCollection, regions, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.regions = check_regions(regions)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.convert(d[key], self.regions)
        return d


class LabelToRegionsd(_Regionsd):
    """Dictionary transform: integer label map -> one float channel per region (for sigmoid training)."""


class RegionsToLabeld(_Regionsd):
    """Dictionary transform: thresholded region masks -> single-channel label map (what files and MONAI Label
    carry)."""

    convert = staticmethod(regions_to_labels)
