"""A study's settings for tiny synthetic runs, shared by the study tests."""

from pathlib import Path

import pytest

from tests.conftest import make_msd_folder
from volmae.study import StudyConfig


@pytest.fixture
def study_task(tmp_path: Path) -> Path:
    """A 20-case synthetic task (16 training cases on fold 0), volumes large enough for a 16^3 ROI."""
    return make_msd_folder(tmp_path / "task", n=20, shape=(20, 28, 20))


def tiny_study(task: Path, out: Path, **kw) -> StudyConfig:
    """A study of seconds: 16^3 ROI, 2 steps per run, one pretraining epoch."""
    base = dict(
        dataset_dir=str(task), out_dir=str(out), encoders=["vit-tiny"], fractions=[0.25, 1.0], seeds=[0, 1],
        roi_size=(16, 16, 16), steps=2, batch_size=2, num_samples=1, pretrain_epochs=1, curve_fractions=[0.5],
        curve_points=2, curve_cases=2, device="cpu",
    )  # fmt: skip
    base.update(kw)
    return StudyConfig(**base)
