"""Datasets and epoch-seeded data loaders, so that a resumed run sees exactly the batches it would have seen.

Every epoch's randomness (shuffle order, crops, flips, worker seeds) is a pure function of ``(seed, epoch)``:
the shuffle generator and the transforms' random state are re-seeded at the start of each epoch, and MONAI's
``DataLoader`` seeds each worker's transforms from the shuffle generator. Resuming at epoch ``e`` therefore
replays epoch ``e`` bit for bit, with any number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

from volmae.errors import ConfigError

__all__ = ["make_dataset", "epoch_loader", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 31-bit seed for ``(seed, epoch, stream)``; distinct streams for data and model randomness."""
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**31 - 1)


def make_dataset(
    items: Sequence[dict],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
) -> Dataset:
    """``cache``: ``"memory"`` (``CacheDataset``, deterministic part held in RAM), ``"disk"``
    (``PersistentDataset`` in ``cache_dir``, for datasets larger than RAM) or ``"none"``."""
    items = list(items)
    if cache == "memory":
        return CacheDataset(items, transform, num_workers=num_workers or None, progress=False, copy_cache=False)
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("cache='disk' needs cache_dir (a folder for the preprocessed volumes)")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(items, transform)
    raise ConfigError(f"cache={cache!r}: expected 'memory', 'disk' or 'none'")


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose order and augmentation depend only on ``(seed, epoch)``."""
    s = epoch_seed(seed, epoch)
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=s)  # used as-is with num_workers=0; workers re-seed from the generator
    generator = torch.Generator().manual_seed(s)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
    )
