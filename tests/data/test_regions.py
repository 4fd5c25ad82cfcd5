"""Nested label regions (BraTS TC / WT / ET) <-> label maps."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from volmae.data.convert import BRATS_REGIONS
from volmae.data.regions import LabelToRegionsd, RegionsToLabeld, check_regions, labels_to_regions, regions_to_labels


def test_brats_regions_round_trip():
    label = torch.randint(0, 4, (1, 6, 7, 5))
    masks = labels_to_regions(label, BRATS_REGIONS)
    assert masks.shape == (3, 6, 7, 5)
    assert torch.equal(masks[0].bool(), (label[0] == 2) | (label[0] == 3))  # TC
    assert torch.equal(masks[1].bool(), label[0] > 0)  # WT
    assert torch.equal(masks[2].bool(), label[0] == 3)  # ET
    assert torch.equal(regions_to_labels(masks, BRATS_REGIONS), label.to(torch.uint8))


def test_inner_region_wins_and_outer_only_voxels_get_their_own_label():
    masks = torch.zeros(3, 1, 1, 3)
    masks[1] = 1  # WT everywhere
    masks[0, ..., 1:] = 1  # TC on the last two
    masks[2, ..., 2] = 1  # ET on the last one
    assert regions_to_labels(masks, BRATS_REGIONS).flatten().tolist() == [1, 2, 3]


def test_meta_and_transform_history_are_kept():
    label = MetaTensor(torch.ones(1, 2, 2, 2), affine=torch.eye(4) * 2)
    label.applied_operations.append({"class": "X"})
    masks = LabelToRegionsd("label", BRATS_REGIONS)({"label": label})["label"]
    assert isinstance(masks, MetaTensor) and torch.equal(masks.affine, label.affine)
    assert masks.applied_operations == label.applied_operations
    back = RegionsToLabeld("label", BRATS_REGIONS)({"label": masks})["label"]
    assert back.shape == (1, 2, 2, 2) and back.applied_operations == label.applied_operations


@pytest.mark.parametrize("bad", [{}, {"TC": []}, {"TC": [0]}, {"TC": [1.5]}, {"TC": "23"}])
def test_bad_region_tables(bad):
    with pytest.raises(ValueError, match="region"):
        check_regions(bad)


def test_mask_channels_must_match_the_table():
    with pytest.raises(ValueError, match="2 channels for 3 regions"):
        regions_to_labels(torch.zeros(2, 2, 2, 2), BRATS_REGIONS)
