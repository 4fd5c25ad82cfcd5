"""Datasets and epoch-seeded loaders: the batches of an epoch are a function of (seed, epoch) only."""

from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset

from tests.conftest import make_case
from volmae.data.loading import (
    RankBatches,
    default_cache_dir,
    epoch_loader,
    epoch_seed,
    item_seed,
    make_dataset,
    steps_per_epoch,
)
from volmae.data.transforms import Preprocessing, train_transforms
from volmae.errors import ConfigError


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loading")
    return [make_case(folder, f"c{i}", shape=(12, 13, 14), seed=i) for i in range(5)]


def _transform():
    return train_transforms(Preprocessing("mri", (8, 8, 8), pixdim=None, num_samples=2), 3)


def _epoch(ds, seed, epoch, num_workers=0):
    return [
        (b["image"].as_tensor().clone(), b["label"].as_tensor().clone())
        for b in epoch_loader(ds, 2, seed, epoch, num_workers=num_workers)
    ]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_same_seed_and_epoch_give_identical_batches(items, cache):
    ds = make_dataset(items, _transform(), cache=cache)
    e3 = _epoch(ds, seed=7, epoch=3)
    assert len(e3) == 3  # 5 volumes, batch 2
    assert tuple(e3[0][0].shape) == (4, 1, 8, 8, 8)  # 2 volumes x 2 crops
    _epoch(ds, seed=7, epoch=0)  # another epoch in between must not matter
    assert _same(_epoch(ds, seed=7, epoch=3), e3)
    assert not _same(_epoch(ds, seed=7, epoch=4), e3)
    assert not _same(_epoch(ds, seed=8, epoch=3), e3)


def test_fresh_dataset_replays_an_epoch(items):
    """A resumed run builds a new dataset: epoch 2 must match the uninterrupted run's epoch 2."""
    first = make_dataset(items, _transform(), cache="memory")
    for e in range(2):
        _epoch(first, 0, e)
    uninterrupted = _epoch(first, 0, 2)
    resumed = _epoch(make_dataset(items, _transform(), cache="memory"), 0, 2)
    assert _same(resumed, uninterrupted)


def test_order_depends_on_epoch(items):
    ds = make_dataset(items, _transform(), cache="none")

    def order(epoch):
        return [v for b in epoch_loader(ds, 1, 0, epoch) for v in b["image"].meta["filename_or_obj"]]

    orders = {tuple(order(e)) for e in range(6)}
    assert order(2) == order(2)
    assert len(orders) > 1
    assert sorted(order(0)) == sorted(it["image"] for it in items for _ in range(2))  # each volume once, 2 crops


def test_no_shuffle_keeps_datalist_order(items):
    ds = make_dataset(items, _transform(), cache="none")
    names = [b["image"].meta["filename_or_obj"] for b in epoch_loader(ds, 1, 0, 5, shuffle=False)]
    # one volume per batch (its two crops), volumes in datalist order
    assert names == [[it["image"]] * 2 for it in items]


def test_with_a_worker_process(items):
    ds = make_dataset(items, _transform(), cache="memory")
    a = _epoch(ds, 1, 1, num_workers=1)
    assert _same(_epoch(ds, 1, 1, num_workers=1), a)
    assert not _same(_epoch(ds, 1, 2, num_workers=1), a)


def test_drop_last(items):
    ds = make_dataset(items, _transform(), cache="none")
    assert len(list(epoch_loader(ds, 2, 0, 0, drop_last=True))) == 2


def test_make_dataset_kinds(items, tmp_path):
    assert isinstance(make_dataset(items, _transform(), cache="memory"), CacheDataset)
    assert type(make_dataset(items, _transform(), cache="none")) is Dataset
    disk = make_dataset(items, _transform(), cache="disk", cache_dir=tmp_path / "cache")
    assert isinstance(disk, PersistentDataset)
    assert _same(_epoch(disk, 2, 0), _epoch(disk, 2, 0))
    assert any((tmp_path / "cache").iterdir())  # the deterministic part was written to disk


def test_disk_cache_default_location_and_preprocessing_key(items, tmp_path, monkeypatch):
    monkeypatch.setenv("VOLMAE_CACHE_DIR", str(tmp_path / "shared"))
    assert default_cache_dir() == tmp_path / "shared"
    one = make_dataset(items, _transform(), cache="disk", key="mri 1 mm")
    _epoch(one, 0, 0)
    again = make_dataset(items, _transform(), cache="disk", key="mri 1 mm")
    other = make_dataset(items, _transform(), cache="disk", key="mri 2 mm")
    assert again.cache_dir == one.cache_dir != other.cache_dir and one.cache_dir.parent == tmp_path / "shared"
    assert len(list(one.cache_dir.iterdir())) == len(items)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create the disk cache folder"):
        make_dataset(items, _transform(), cache="disk", cache_dir=tmp_path / "file" / "sub")


def test_make_dataset_errors(items):
    with pytest.raises(ConfigError, match="cache='ram'"):
        make_dataset(items, _transform(), cache="ram")


def test_epoch_seed():
    seeds = {epoch_seed(s, e, k) for s in range(3) for e in range(50) for k in range(2)}
    assert len(seeds) == 300
    assert all(0 <= s < 2**31 - 1 for s in seeds)
    assert epoch_seed(5, 7) == epoch_seed(5, 7)


def test_workers_do_not_change_the_augmentation(items):
    """Each volume's crops come from (seed, epoch, index), not from the process that loads it."""
    ds = make_dataset(items, _transform(), cache="memory")
    assert _same(_epoch(ds, 3, 2, num_workers=0), _epoch(ds, 3, 2, num_workers=1))


@pytest.mark.parametrize("n, batch, world", [(10, 2, 2), (7, 2, 2), (7, 1, 3), (5, 3, 1)])
def test_rank_batches_split_each_global_batch(n, batch, world):
    whole = RankBatches(n, batch * world, seed=4, epoch=1)  # one process at the global batch size
    shares = [list(RankBatches(n, batch, 4, 1, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == steps_per_epoch(n, batch, world)
    for k, parts in enumerate(zip(*shares)):
        assert len({len(p) for p in parts}) == 1  # equal shares: every rank takes every step
        glued = [i for p in parts for i in p]
        if n % world == 0:
            assert glued == whole.batches[k]  # rank r holds the r-th contiguous part of one process's batch
    seen = sorted(i for s in shares for b in s for i in b)
    assert set(seen) == set(range(n)) and len(seen) == n + (-n) % world  # padded like DistributedSampler
    if world == 1:  # one process: exactly DataLoader's shuffled batches
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(4, 1))).tolist()
        assert [i for b in shares[0] for i in b] == order


def test_rank_batches_skip_and_errors():
    full = RankBatches(10, 2, 0, 0, rank=1, world_size=2)
    assert list(RankBatches(10, 2, 0, 0, rank=1, world_size=2, skip=2)) == full.batches[2:]
    with pytest.raises(ConfigError, match="rank=2"):
        RankBatches(10, 2, 0, 0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size=0"):
        RankBatches(10, 0, 0, 0)


def test_item_seed_depends_on_every_part():
    seeds = {item_seed(s, e, i) for s in range(2) for e in range(3) for i in range(50)}
    assert len(seeds) == 300 and item_seed(1, 2, 3) == item_seed(1, 2, 3)
