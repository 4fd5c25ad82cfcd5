"""Helpers for the console-script tests: a tiny task folder, running a script, and the clean-error check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.artifact.weights import hub_env, server  # noqa: F401 - fixtures of the volmae-download tests
from volmae.cli import evaluate as evaluate_cli
from volmae.cli import pretrain as pretrain_cli
from volmae.cli import train as train_cli

MAINS = {"volmae-train": train_cli.main, "volmae-pretrain": pretrain_cli.main, "volmae-evaluate": evaluate_cli.main}
MODULES = {
    "volmae-train": "volmae.cli.train",
    "volmae-pretrain": "volmae.cli.pretrain",
    "volmae-evaluate": "volmae.cli.evaluate",
}


def write_task(root: Path, n: int = 5, shape=(12, 14, 12)) -> Path:
    """A tiny MSD-layout task with ``n`` cases, ``splits.json`` holding case_000 out as fold 0."""
    rng = np.random.default_rng(0)
    training = []
    for i in range(n):
        name = f"case_{i:03d}.nii.gz"
        lab = np.zeros(shape, np.uint8)
        lab[3:7, 3:8, 3:7], lab[7:10, 3:8, 3:7] = 1, 2
        img = (rng.normal(100, 10, shape) + 50 * lab).astype(np.float32)
        for sub, arr in (("imagesTr", img), ("labelsTr", lab)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / sub / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "Tiny",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "a", "2": "b"},
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "splits.json").write_text(json.dumps({"folds": [["case_000"], [f"case_{i:03d}" for i in range(1, n)]]}))
    return root


def truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def assert_clean_error(rc: int, err: str, prog: str, *needles: str, one_line: bool = True) -> str:
    """Exit status 2, exactly one ``<prog>: error:`` line, no traceback; returns the error text."""
    assert rc == 2, f"exit status {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    message = err[err.index(lines[0]) :] if not one_line else lines[0]
    if one_line:
        assert err.rstrip().endswith(lines[0]), f"the error line is not the last thing printed:\n{err}"
    for n in needles:
        assert n in message, f"{n!r} not in {message!r}"
    return message


def run_script(prog: str, *args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / prog
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", MODULES[prog]]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120)


def run_main(capsys, prog: str, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = MAINS[prog](list(args))
    return rc, capsys.readouterr().err


@pytest.fixture
def task(tmp_path) -> Path:
    return write_task(tmp_path / "task")
