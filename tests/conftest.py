"""Shared fixtures: the real-data locator (skips with a clear message when absent) and small synthetic volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volmae.data.paths import data_root, dataset_path

torch.set_num_threads(2)

MISSING = "real data not found: set VOLMAE_DATA or put ../shared/data beside the repo ({})"


def require_dataset(name: str) -> Path:
    """Path of a real dataset folder, or skip the test saying what is missing."""
    p = dataset_path(name)
    if p is None:
        pytest.skip(MISSING.format(f"looked for {name!r} under {data_root() or '../shared/data'}"))
    return p


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    return require_dataset("msd_hippocampus")


def write_synthetic_task(root: Path, n: int = 6, shape=(20, 28, 20), seed: int = 0) -> Path:
    """A tiny MSD-layout task: blurred noise images with two box-shaped 'organs' whose intensity differs."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        o = rng.integers(2, 5, 3)
        lab[o[0]:o[0] + 6, o[1]:o[1] + 8, o[2]:o[2] + 6] = 1
        lab[o[0] + 6:o[0] + 12, o[1]:o[1] + 8, o[2]:o[2] + 6] = 2
        img = (rng.normal(100, 10, shape) + 60 * (lab == 1) + 120 * (lab == 2)).astype(np.float32)
        aff = np.diag([1.0, 1.0, 1.0, 1.0])
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(img, aff), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(lab, aff), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "Synthetic", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "b"},
            "numTraining": n, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def synthetic_task(tmp_path) -> Path:
    return write_synthetic_task(tmp_path / "task")
