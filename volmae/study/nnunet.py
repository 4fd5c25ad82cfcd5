"""nnU-Net v2 itself as a peer of the label-efficiency study (``volmae-study --peer nnunet``).

The peer is the real thing, not a re-implementation: the ``nnunetv2`` package plans, preprocesses, trains and
predicts with its own code (:mod:`volmae.study.nnunet_job`); volmae only hands it the same training cases as the
volmae run it is compared with (nnU-Net's raw format: ``imagesTr/<case>_<channel>.nii.gz``, ``labelsTr``, a
``dataset.json``), a training budget in CPU seconds, and scores its predictions of the held-out cases with volmae's
own evaluation (:func:`volmae.evaluation.evaluate.evaluate_predictions`), so the figures are comparable case by case.

Why a separate Python: ``nnunetv2`` pins a torch build through ``dynamic-network-architectures -> timm ->
torchvision``; installed beside volmae it would replace volmae's torch. The job therefore runs in whichever
interpreter has ``nnunetv2``: ``--nnunet-python``, else ``$VOLMAE_NNUNET_PYTHON``, else volmae's own (if the extra
``pip install 'volmae[peers]'`` was installed there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from volmae.data import load_volume
from volmae.data.datalist import Datalist
from volmae.errors import ConfigError, VolmaeError
from volmae.utils.io import atomic_save_nifti, atomic_write_json

__all__ = ["INSTALL", "find_nnunet_python", "write_raw_task", "run_nnunet", "NnunetFailed"]

INSTALL = (
    "nnU-Net v2 is not installed: python -m venv ~/nnunet-env && ~/nnunet-env/bin/pip install nnunetv2==2.8.1, then "
    "pass --nnunet-python ~/nnunet-env/bin/python (or set VOLMAE_NNUNET_PYTHON); pip install 'volmae[peers]' "
    "installs it beside volmae instead, with nnU-Net's own torch"
)
JOB = Path(__file__).with_name("nnunet_job.py")


class NnunetFailed(VolmaeError, RuntimeError):
    """The nnU-Net job stopped with an error (its log names it)."""


def _has_nnunet(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import nnunetv2"], capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_nnunet_python(given: str | None = None) -> str:
    """The interpreter that runs nnU-Net: ``given``, else ``$VOLMAE_NNUNET_PYTHON``, else this one; a one-line
    :class:`ConfigError` saying how to install nnU-Net when none has it."""
    named = given or os.environ.get("VOLMAE_NNUNET_PYTHON")
    if named:
        if not _has_nnunet(named):
            raise ConfigError(f"nnunet_python={named}: cannot import nnunetv2 there. {INSTALL}")
        return named
    if _has_nnunet(sys.executable):
        return sys.executable
    raise ConfigError(INSTALL)


def _one_channel_file(src: str | Path, dst: Path) -> None:
    """``dst`` (``.nii.gz``) holding the one-channel volume ``src``: a link where ``src`` is already ``.nii.gz``, else
    read (``.nii``, DICOM folder, ...) and written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    if str(src).endswith(".nii.gz"):
        dst.symlink_to(Path(src).resolve())
        return
    data, affine = load_volume(src)
    data = data[..., 0] if data.ndim == 4 and data.shape[-1] == 1 else data
    if data.ndim != 3:
        raise ConfigError(f"{src}: one channel expected per file, got shape {data.shape}")
    atomic_save_nifti(np.ascontiguousarray(data), affine, dst)


def _channel_files(image: str | Sequence[str], case: str, folder: Path, channels: int) -> list[Path]:
    """Write (or link) one ``<case>_<cccc>.nii.gz`` per channel of ``image`` in ``folder``: ``image`` is one file
    (or DICOM folder) holding every channel, or one source per channel (``.nii.gz`` files are linked, other formats
    such as ``.nii`` or DICOM folders are read and written)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{case}_{c:04d}.nii.gz" for c in range(channels)]
    sources = [image] if isinstance(image, str | Path) else list(image)
    if len(sources) == channels:  # one source per channel
        for src, dst in zip(sources, paths):
            _one_channel_file(src, dst)
        return paths
    if len(sources) != 1:
        raise ConfigError(f"case {case}: {len(sources)} image files, the task declares {channels} channels")
    data, affine = load_volume(sources[0])
    data = data if data.ndim == 4 else data[..., None]  # X Y Z C
    if data.shape[-1] != channels:
        raise ConfigError(f"{sources[0]}: {data.shape[-1]} channels, the task declares {channels}")
    for c, dst in enumerate(paths):
        atomic_save_nifti(np.ascontiguousarray(data[..., c]), affine, dst)
    return paths


def write_raw_task(
    datalist: Datalist, train: list[dict], test: list[dict], raw: Path, dataset_id: int, name: str = "volmae"
) -> Path:
    """nnU-Net's raw layout of ``train`` (images and labels) and ``test`` (images) under ``raw``:
    ``Dataset<id>_<name>/{imagesTr,labelsTr,imagesTs}`` and its ``dataset.json``; returns the dataset folder."""
    if not 1 <= dataset_id <= 999:
        raise ConfigError(f"dataset_id={dataset_id}: nnU-Net takes 1..999")
    root = raw / f"Dataset{dataset_id:03d}_{name}"
    channels = datalist.in_channels
    for it in train:
        _channel_files(it["image"], it["case"], root / "imagesTr", channels)
        _one_channel_file(it["label"], root / "labelsTr" / f"{it['case']}.nii.gz")
    for it in test:
        _channel_files(it["image"], it["case"], root / "imagesTs", channels)
    names = {str(i): datalist.modality.get(i, f"channel{i}") for i in range(channels)}
    labels = {("background" if v == 0 else str(k)): int(v) for v, k in sorted(datalist.labels.items())}
    atomic_write_json(
        root / "dataset.json",
        {"channel_names": names, "labels": labels, "numTraining": len(train), "file_ending": ".nii.gz",
         "name": name},
    )  # fmt: skip
    return root


def run_nnunet(
    datalist: Datalist,
    train: list[dict],
    test: list[dict],
    folder: Path,
    seconds: float,
    python: str | None = None,
    seed: int = 0,
    mirroring: bool = True,
    iterations_per_epoch: int = 10,
    val_iterations: int = 1,
    device: str = "cpu",
) -> dict:
    """Train nnU-Net v2 on ``train`` for ``seconds`` of training (its own plans and schedule, fitted to the budget:
    :mod:`volmae.study.nnunet_job`) and predict ``test`` into ``folder/predictions``; returns the job's timings and
    settings (``plan_preprocess_seconds``, ``train_seconds``, ``epochs``, ``iterations``, ``predict_seconds``,
    ``patch_size``, ``batch_size``, the versions). Its log is ``folder/nnunet.log``."""
    if seconds <= 0:
        raise ConfigError(f"seconds={seconds}: the nnU-Net training budget must be positive")
    py = find_nnunet_python(python)
    folder = folder.resolve()
    env = {
        **os.environ,
        "nnUNet_raw": str(folder / "raw"),
        "nnUNet_preprocessed": str(folder / "preprocessed"),
        "nnUNet_results": str(folder / "results"),
        "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "1"),  # one augmentation worker: a CPU run
    }
    write_raw_task(datalist, train, test, folder / "raw", 1)
    job = {
        "dataset_id": 1, "seconds": seconds, "iterations_per_epoch": iterations_per_epoch,
        "val_iterations": val_iterations, "images": str(folder / "raw" / "Dataset001_volmae" / "imagesTs"),
        "predictions": str(folder / "predictions"), "mirroring": mirroring, "device": device, "seed": seed,
        "result": str(folder / "nnunet_result.json"),
    }  # fmt: skip
    atomic_write_json(folder / "job.json", job)
    with open(folder / "nnunet.log", "w") as log:
        rc = subprocess.run([py, str(JOB), str(folder / "job.json")], env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc.returncode:
        tail = (folder / "nnunet.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise NnunetFailed(f"nnU-Net stopped with status {rc.returncode}: {tail[0]} (see {folder / 'nnunet.log'})")
    return json.loads((folder / "nnunet_result.json").read_text())
