"""MONAI Label 0.8.5 serves the hippocampus bundle's released model: a real server on loopback segments a real,
held-out volume as ``volmae-infer --bundle`` does, and trains from the app.

MONAI Label is an optional extra with its own pins (pydicom 2; see the bundle README), so it runs from its own
environment: ``VOLMAE_MONAILABEL_PYTHON`` (that environment's python, volmae installed into it), else ``../mlvenv``
beside the repository, else this python if it has MONAI Label. When none is found, the test builds one into
``<repo>/.monailabel-venv`` with ``tools/monailabel_env.sh``: measured at 263 s on 2 CPU cores shared with a
training run, 7.5 GB on disk (PyPI's torch with its CUDA libraries, which MONAI Label's torchvision needs; most of
it downloaded); later runs reuse it, and the test itself then takes about a minute. A failed build fails the test
with the end of its output; ``VOLMAE_SKIP_MONAILABEL=1`` skips the test instead, without building anything.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundle.conftest import BUNDLES, copy_bundle
from volmae.cli.infer import main as infer_main
from volmae.evaluation.metrics import dice_scores, label_masks

REPO = Path(__file__).resolve().parents[2]
# $VOLMAE_MONAILABEL_PYTHON, else a venv named mlvenv beside the repository (like ../shared/data), else this python
CANDIDATES = [
    os.environ.get("VOLMAE_MONAILABEL_PYTHON", ""),
    str(REPO.parent / "mlvenv" / "bin" / "python"),
    sys.executable,
]
BUILT = REPO / ".monailabel-venv"  # where the test builds MONAI Label's environment when none is found (gitignored)
BUILD_TIMEOUT_S = 1800
# what the server imports (monailabel.tasks.infer.bundle imports torchvision, which a mismatched torch breaks)
CHECK = "import monailabel, monailabel.tasks.infer.bundle, volmae"
CASE = "hippocampus_011"  # held out of fold 0, the fold the released model was scored on


def _works(py: str) -> bool:
    try:  # a copied or half-built venv can hold a dangling bin/python
        return subprocess.run([py, "-c", CHECK], capture_output=True).returncode == 0
    except OSError:
        return False


def _tail(text: str, lines: int = 40) -> str:
    # pip's notes on this machine's local package index say nothing about a failure
    kept = [line for line in text.splitlines() if not line.startswith("WARNING: Location ")]
    return "\n".join(kept[-lines:])


@pytest.fixture(scope="module")
def monailabel_python(msd_hippocampus) -> str:
    """A python with MONAI Label and volmae: found, or built into ``BUILT`` (after the data is known to be there)."""
    if os.environ.get("VOLMAE_SKIP_MONAILABEL") == "1":
        pytest.skip("VOLMAE_SKIP_MONAILABEL=1: MONAI Label server test skipped")
    for py in filter(None, CANDIDATES):
        if _works(py):
            return py
    script = REPO / "tools" / "monailabel_env.sh"
    try:
        done = subprocess.run(
            ["bash", str(script), str(BUILT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{script} {BUILT} took over {BUILD_TIMEOUT_S} s:\n{_tail(out)}", pytrace=False)
    py = str(BUILT / "bin" / "python")
    if done.returncode != 0 or not _works(py):
        pytest.fail(
            f"{script} {BUILT} failed (exit status {done.returncode}); set VOLMAE_SKIP_MONAILABEL=1 to skip this "
            f"test:\n{_tail(done.stdout + done.stderr)}",
            pytrace=False,
        )
    return py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def test_monailabel_serves_the_released_hippocampus_model(msd_hippocampus, monailabel_python, tmp_path):
    py = monailabel_python
    root = copy_bundle("hippocampus", tmp_path / "bundles", models=True)  # with the released models/model.pt
    assert (root / "models" / "model.pt").is_file(), f"{BUNDLES / 'hippocampus' / 'models' / 'model.pt'} is missing"
    app = tmp_path / "app"
    prefix = subprocess.run([py, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True).stdout
    src_app = Path(prefix.strip()) / "monailabel" / "sample-apps" / "monaibundle"  # where `monailabel apps` finds it
    assert src_app.is_dir(), f"MONAI Label's monaibundle sample app not found at {src_app}"
    shutil.copytree(src_app, app)
    shutil.copytree(root, app / "model" / "hippocampus", symlinks=False)
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    scan, truth = (msd_hippocampus / part / f"{CASE}.nii.gz" for part in ("imagesTr", "labelsTr"))
    shutil.copy(scan, studies)
    for case in ("hippocampus_001", "hippocampus_003", "hippocampus_004"):  # labeled studies for app training
        shutil.copy(msd_hippocampus / "imagesTr" / f"{case}.nii.gz", studies)
        shutil.copy(msd_hippocampus / "labelsTr" / f"{case}.nii.gz", studies / "labels" / "final")

    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(py).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [py, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "models", "hippocampus",
           "--conf", "zoo_source", "github", "--conf", "sam2", "false"]  # fmt: skip
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                info = json.loads(_get(f"{base}/info/"))
                break
            except OSError:
                assert server.poll() is None, log_path.read_text()[-3000:]
                time.sleep(1)
        else:
            pytest.fail("MONAI Label did not start in 300 s:\n" + log_path.read_text()[-3000:])
        assert info["models"]["hippocampus"]["labels"] == {"anterior": 1, "posterior": 2}

        req = urllib.request.Request(f"{base}/infer/hippocampus?image={CASE}&output=image", method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            (tmp_path / "ml_seg.nii.gz").write_bytes(r.read())

        # training from the app: configs/train.json with MONAI Label's overrides (datalist, epochs, device ...),
        # starting from the released weights (its CheckpointLoader); the trained weights replace models/model.pt
        weights = app / "model" / "hippocampus" / "models" / "model.pt"
        released = weights.read_bytes()
        body = json.dumps({"max_epochs": 1, "device": "cpu", "val_split": 0.34, "multi_gpu": False}).encode()
        req = urllib.request.Request(
            f"{base}/train/hippocampus?run_sync=true", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=600) as r:
            assert r.status == 200
        assert weights.read_bytes() != released, log_path.read_text()[-3000:]
    finally:
        server.terminate()
        server.wait(30)
        log.close()

    seg, ref = nib.load(tmp_path / "ml_seg.nii.gz"), nib.load(scan)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    values = np.asarray(seg.dataobj)
    assert set(np.unique(values).tolist()) <= {0, 1, 2}
    out = tmp_path / "cli.nii.gz"
    assert infer_main([str(scan), "--bundle", str(root), "-o", str(out), "-q"]) == 0
    assert np.array_equal(values, np.asarray(nib.load(out).dataobj))
    masks = [label_masks(torch.as_tensor(np.asarray(img.dataobj)), [1, 2]) for img in (seg, nib.load(truth))]
    dice = dice_scores(*masks)
    assert np.mean(dice) >= 0.75, f"{CASE}: Dice anterior {dice[0]:.3f}, posterior {dice[1]:.3f}"
