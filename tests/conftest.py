"""Shared fixtures: real-data folders (skipped with a clear message when absent) and small synthetic NIfTI tasks."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volmae.data.paths import data_root, dataset_path

torch.set_num_threads(2)

SKIP_MESSAGE = "real data not found: set VOLMAE_DATA or put ../shared/data beside the repo"


def stage_command(stage: str, task, out, *extra: str, epochs: int = 3, batch: int = 2, ranks: int = 1) -> list[str]:
    """A tiny CPU run of ``volmae-<stage>`` (ROI 16^3; fine-tuning with feature size 4) as a command line: one
    process, or ``ranks`` gloo processes under ``torchrun``."""
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd = [*launcher, "-m", f"volmae.cli.{stage}", "--dataset-dir", str(task), "--out-dir", str(out)]
    cmd += ["--roi-size", "16", "16", "16", "--epochs", str(epochs), "--batch-size", str(batch)]
    cmd += ["--device", "cpu", "--quiet"] + (["--feature-size", "4"] if stage == "train" else [])
    return [*cmd, *extra]


@pytest.fixture(scope="session")
def _empty_volmae_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("volmae_home")


@pytest.fixture(autouse=True)
def _no_user_weights_no_downloads(_empty_volmae_home, monkeypatch):
    """No test reads the user's fetched weights or downloads any: ``VOLMAE_HOME`` is an empty folder of this session
    and ``VOLMAE_OFFLINE=1`` (tests of downloads set their own)."""
    monkeypatch.setenv("VOLMAE_HOME", str(_empty_volmae_home))
    monkeypatch.setenv("VOLMAE_OFFLINE", "1")


def require_dataset(name: str) -> Path:
    """Path of a real dataset folder, or skip the test saying what is missing."""
    path = dataset_path(name)
    if path is None:
        pytest.skip(f"{SKIP_MESSAGE} (needs {name}/ under {data_root() or '../shared/data'})")
    return path


@pytest.fixture(scope="session")
def msd_hippocampus() -> Path:
    """``<data>/msd_hippocampus`` (MSD Task04 layout, 208 labelled cases)."""
    return require_dataset("msd_hippocampus")


@pytest.fixture(scope="session")
def dicom_crops() -> Path:
    """``<data>/dicom_hippocampus_crops`` (Study1..3, one DICOM series each)."""
    return require_dataset("dicom_hippocampus_crops")


@pytest.fixture(scope="session")
def ircadb_ct() -> Path:
    """``<data>/ircadb01_ct`` (3 real abdominal CTs, BTCV label numbering, MSD layout)."""
    return require_dataset("ircadb01_ct")


@pytest.fixture(scope="session")
def totalseg_examples() -> Path:
    """``<data>/totalseg_examples`` (TotalSegmentator's small example CT + MR, model-made labels, label names)."""
    return require_dataset("totalseg_examples")


@pytest.fixture(scope="session")
def brats2013() -> Path:
    """``<data>/brats2013_deepmedic`` (4 BraTS 2013 cases, FLAIR + T1c, DeepMedic's folder layout)."""
    return require_dataset("brats2013_deepmedic")


@pytest.fixture
def two_series_folder(dicom_crops, tmp_path) -> Path:
    """Two real DICOM series (Study1, Study2) copied into one folder ``mixed/``."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for study, sub in [("Study1", "13_HCropVolume"), ("Study2", "14_HCropVolume")]:
        for f in sorted((dicom_crops / study / sub).iterdir()):
            shutil.copy(f, folder / f"{study}_{f.name}")
    return folder


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else np.asarray(affine, float)), str(path))
    return path


@pytest.fixture
def write_nifti(tmp_path: Path) -> Callable[..., Path]:
    """``write_nifti(name, array, affine=None)`` -> path of a NIfTI file written under ``tmp_path``."""

    def write(name: str, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        return save_nifti(tmp_path / name, array, affine)

    return write


def make_case(folder: Path, name: str, shape=(10, 11, 12), seed: int = 0, affine=None) -> dict:
    """A random MRI-like image with a two-class label block: ``{"image", "label", "case"}``."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 20.0, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    lab[5:8, 6:9, 6:9] = 2
    image = save_nifti(folder / "imagesTr" / f"{name}.nii.gz", img, affine)
    label = save_nifti(folder / "labelsTr" / f"{name}.nii.gz", lab, affine)
    return {"image": str(image), "label": str(label), "case": name}


def make_msd_folder(folder: Path, n: int = 6, shape=(10, 11, 12), **meta) -> Path:
    """A tiny MSD-layout task folder (``dataset.json`` + ``imagesTr`` + ``labelsTr``) with ``n`` cases."""
    folder.mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n):
        make_case(folder, f"case_{i:03d}", shape, seed=i)
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    content = {
        "name": "Synthetic",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "a", "2": "b"},
        "training": training,
        "test": [],
    }
    content.update(meta)
    (folder / "dataset.json").write_text(json.dumps(content))
    return folder


@pytest.fixture
def msd_folder(tmp_path: Path) -> Path:
    """A six-case synthetic MSD task folder under ``tmp_path``."""
    return make_msd_folder(tmp_path / "task")


@pytest.fixture
def synthetic_task(tmp_path: Path) -> Path:
    """A six-case synthetic task large enough for a 16^3 ROI (engine-level tests)."""
    return make_msd_folder(tmp_path / "task", shape=(20, 28, 20))


def model_file(built, path: Path, labels: dict | None = None, regions: dict | None = None, **task) -> Path:
    """Save a :class:`~volmae.networks.registry.Built` network as a volmae model file (a hippocampus-like task at its
    window; a segmentation network gets labels 0..out_channels-1 unless given)."""
    from volmae.artifact import ModelArtifact, Provenance, Task
    from volmae.data.transforms import get_preprocessing

    model, config = built
    if labels is None and config.role == "segmentation" and not regions:
        labels = {k: ("background" if k == 0 else f"class_{k}") for k in range(config.out_channels)}
    prep = get_preprocessing("hippocampus", roi_size=config.window)
    t = Task(prep, config.in_channels, labels or {}, regions=regions, **task)
    ModelArtifact.from_network(model, config, t, Provenance.now("test")).save(path)
    return Path(path)
