"""Datasets and epoch-seeded data loaders, so that a resumed run sees exactly the batches it would have seen.

Every epoch's randomness is a pure function of ``(seed, epoch)``: the shuffle order comes from a generator seeded
with it, and each volume's augmentation (crops, flips) from ``(seed, epoch, index)`` (:class:`SeededItems`), not
from the order in which a process happens to load volumes. Resuming at epoch ``e`` (or at a step inside it)
therefore replays it bit for bit, with any number of workers and, under ``torchrun``, any number of ranks: each
rank takes its contiguous share of every global batch (:class:`RankBatches`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

from volmae.errors import ConfigError

__all__ = [
    "default_cache_dir",
    "make_dataset",
    "epoch_loader",
    "epoch_seed",
    "item_seed",
    "RankBatches",
    "SeededItems",
    "steps_per_epoch",
]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 31-bit seed for ``(seed, epoch, stream)``; distinct streams for data and model randomness."""
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**31 - 1)


def default_cache_dir() -> Path:
    """Where ``cache="disk"`` keeps preprocessed volumes when no ``cache_dir`` is given: ``$VOLMAE_CACHE_DIR``, else
    ``~/.cache/volmae``. Inside it, one sub-folder per preprocessing (``make_dataset``'s ``key``) holds one file
    per item (named by a hash of its paths), so runs and ranks can share it and a changed spacing or ROI never
    reuses stale volumes."""
    return Path(os.environ.get("VOLMAE_CACHE_DIR") or Path.home() / ".cache" / "volmae").expanduser()


def make_dataset(
    items: Sequence[dict],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    key: str = "",
) -> Dataset:
    """``cache``: ``"memory"`` (``CacheDataset``: the deterministic part of every volume held in RAM, in every
    rank), ``"disk"`` (``PersistentDataset`` in ``cache_dir`` or :func:`default_cache_dir`: streams from disk,
    for datasets larger than RAM) or ``"none"`` (read and preprocess every time). ``key`` describes the
    preprocessing (the disk cache's sub-folder is a hash of it and of the transforms' names)."""
    items = list(items)
    if cache == "memory":
        return CacheDataset(items, transform, num_workers=num_workers or None, progress=False, copy_cache=False)
    if cache == "disk":
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        names = ",".join(type(t).__name__ for t in getattr(transform, "transforms", [transform]))
        folder = root / hashlib.sha256(f"{key}|{names}".encode()).hexdigest()[:16]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cache_dir={str(folder)!r}: cannot create the disk cache folder ({e.strerror})"
            ) from None
        return PersistentDataset(items, transform, cache_dir=folder)
    if cache == "none":
        return Dataset(items, transform)
    raise ConfigError(f"cache={cache!r}: expected 'memory', 'disk' or 'none'")


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one volume's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededItems(torch.utils.data.Dataset):
    """``data[i]`` with its random transforms re-seeded from ``(seed, epoch, i)`` first: the augmentation of a
    volume depends on which volume and epoch it is, not on the process, worker or position that loads it."""

    def __init__(self, data: Dataset, seed: int, epoch: int) -> None:
        self.data, self.seed, self.epoch = data, seed, epoch
        transform = getattr(data, "transform", None)
        self._transform = transform if hasattr(transform, "set_random_state") else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        if self._transform is not None:
            self._transform.set_random_state(seed=item_seed(self.seed, self.epoch, index))
        return self.data[index]


class RankBatches(torch.utils.data.Sampler):
    """The batches of indices one rank loads in one epoch.

    The epoch's order is ``randperm(n)`` from a generator seeded with ``epoch_seed(seed, epoch)`` (every rank
    draws the same), padded by repeating its start to a multiple of ``world_size`` (as ``DistributedSampler`` does);
    global batch ``k`` is its ``k``-th block of ``world_size x batch_size`` indices, and rank ``r`` yields the
    ``r``-th contiguous equal share of each block. One process (``world_size=1``) gets ``DataLoader``'s own
    shuffled batches. ``skip`` global batches at the start are left out (a resumed epoch).

    Why not MONAI's ``DistributedSampler``: it deals indices round-robin (rank ``r`` gets ``r, r + N, ...``), so the
    ranks' step ``k`` holds a different split of the global batch than one process's step ``k`` and masks drawn for
    the global batch would land on other volumes; contiguous shares make N ranks train exactly like one process.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
    ) -> None:
        if n < 1 or batch_size < 1:
            raise ConfigError(f"RankBatches: n={n}, batch_size={batch_size}: both must be >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank}: must be in [0, world_size={world_size})")
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).tolist()
        else:
            order = list(range(n))
        order += order[: (-n) % world_size]
        step = batch_size * world_size
        blocks = [order[k : k + step] for k in range(0, len(order), step)]
        if drop_last and blocks and len(blocks[-1]) < step:
            blocks.pop()
        self.batches = []
        for block in blocks[skip:]:
            share = len(block) // world_size
            if share:
                self.batches.append(block[rank * share : (rank + 1) * share])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch of ``n`` volumes at ``batch_size`` per rank on ``world_size`` ranks."""
    padded = n + (-n) % world_size
    step = batch_size * world_size
    return padded // step if drop_last else math.ceil(padded / step)


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 0,
) -> DataLoader:
    """A ``DataLoader`` whose batches depend only on ``(seed, epoch)`` (and, under ``torchrun``, the rank): see
    :class:`RankBatches` and :class:`SeededItems`. ``skip`` global batches at the epoch's start are left out."""
    sampler = RankBatches(len(dataset), batch_size, seed, epoch, shuffle, drop_last, rank, world_size, skip)
    return DataLoader(
        SeededItems(dataset, seed, epoch),
        batch_sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),  # MONAI seeds workers from it
        persistent_workers=False,
    )
