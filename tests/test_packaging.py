"""volmae as users install it: the wheel carries the bundles, so a fresh environment with ``pip install .`` (not
editable) lists a bundle's classes and segments a scan with ``--bundle hippocampus --model ...``; and the README's
test command is the one CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import save_nifti

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command.strip() in (REPO / ".ci" / "run").read_text()
    assert "ruff check ." in test_command and "ruff format --check ." in test_command


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_a_fresh_environment_installs_the_wheel_with_its_bundles(tmp_path):
    """Several minutes: builds the wheel, makes a new venv, installs torch (the CPU wheel) and the wheel into it."""
    from volmae.artifact.bundles import bundle_network
    from volmae.networks import build_network

    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)])
    (wheel,) = (tmp_path / "dist").glob("volmae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = ("models/model.pt", "models/model_card.md", "models/release.json")  # the released model
    for rel in ("configs/inference.json", "configs/train.json", "configs/metadata.json", "docs/data_license.txt",
                *shipped):  # fmt: skip
        assert f"volmae/bundles/hippocampus/{rel}" in names, rel
    assert not [n for n in names if "/models/" in n and not n.startswith("volmae/bundles/hippocampus/models/")]
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VOLMAE_BUNDLES")}
    _run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], env=env)
    _run([py, "-m", "pip", "install", "-q", str(wheel)], env=env)
    where = _run([py, "-c", "import volmae; print(volmae.__file__)"], env=env, cwd=tmp_path).stdout
    assert str(venv) in where  # the installed copy, not this checkout

    infer = str(venv / "bin" / "volmae-infer")
    out = _run([infer, "--list-classes", "--bundle", "btcv"], env=env, cwd=tmp_path).stdout
    assert "liver" in out and "aorta" in out
    torch.manual_seed(0)  # stand-in weights: this checks the plumbing, not a segmentation
    net = build_network(bundle_network(REPO / "volmae" / "bundles" / "hippocampus"))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    scan = save_nifti(tmp_path / "scan.nii.gz", np.random.default_rng(0).normal(100, 20, (35, 50, 35)).astype("f4"))
    _run([infer, str(scan), "--bundle", "hippocampus", "--model", str(tmp_path / "weights.pt"), "-o",
          str(tmp_path / "seg.nii.gz"), "--device", "cpu", "--quiet"], env=env, cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "seg.nii.gz").is_file()
    # the released model, offline, right after installing: no --model, no download
    offline = {**env, "VOLMAE_OFFLINE": "1", "VOLMAE_HOME": str(tmp_path / "home")}
    _run([infer, str(scan), "--bundle", "hippocampus", "-o", str(tmp_path / "released.nii.gz"), "--device", "cpu",
          "--quiet"], env=offline, cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "released.nii.gz").is_file() and not (tmp_path / "home").exists()
