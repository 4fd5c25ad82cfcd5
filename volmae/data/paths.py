"""Where the real data lives: ``$VOLMAE_DATA``, else ``../shared/data`` beside the repository (or the cwd).

The one helper tests, benchmarks and the demo use to find ``msd_hippocampus``, ``brats2013_deepmedic`` ... .
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "dataset_path"]

_REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path | None:
    """The shared data folder, or ``None`` when there is none."""
    env = os.environ.get("VOLMAE_DATA")
    candidates = (
        [Path(env).expanduser()] if env else [_REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    )
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def dataset_path(name: str) -> Path | None:
    """``<data_root>/<name>`` when it exists, else ``None``."""
    root = data_root()
    if root is None:
        return None
    p = root / name
    return p if p.exists() else None
