"""Mask sharding: data-parallel ranks mask their rows of the global batch exactly as one process masks it."""

import pytest
import torch

from volmae.networks.reconstruction import random_mask


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_the_rows_of_the_global_draw(world):
    whole = random_mask(world * 2, 20, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4))
    for rank in range(world):
        part = random_mask(2, 20, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4), (rank, world))
        rows = slice(2 * rank, 2 * rank + 2)
        assert torch.equal(part.mask, whole.mask[rows]) and torch.equal(part.ids_shuffle, whole.ids_shuffle[rows])
    # one process is the plain draw (unchanged numbers for single-process runs)
    plain = random_mask(2, 20, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4))
    noise = torch.rand(2, 20, generator=torch.Generator().manual_seed(4))
    assert torch.equal(plain.ids_shuffle, torch.argsort(noise, dim=1))


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_bad_shard(shard):
    with pytest.raises(ValueError, match=r"shard=\("):
        random_mask(2, 20, 0.75, torch.device("cpu"), shard=shard)
