"""MONAI Label 0.8.5 imports the hippocampus bundle: a real server on loopback segments a real volume.

MONAI Label is an optional extra with its own pins (see the bundle README), so it lives in its own environment:
set ``VOLMAE_MONAILABEL_PYTHON`` to that environment's python (with volmae installed into it), or create it as
``../mlvenv`` beside the repository. The test skips, saying so, when no such python is found.
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

from tests.bundle.conftest import copy_bundle, run_workflow
from volmae.inference.infer import InferConfig, infer

REPO = Path(__file__).resolve().parents[2]
# $VOLMAE_MONAILABEL_PYTHON, else a venv named mlvenv beside the repository (like ../shared/data), else this python
CANDIDATES = [
    os.environ.get("VOLMAE_MONAILABEL_PYTHON", ""),
    str(REPO.parent / "mlvenv" / "bin" / "python"),
    sys.executable,
]


def _monailabel_python() -> str:
    for py in filter(None, CANDIDATES):
        try:  # a copied or half-built venv can hold a dangling bin/python
            ok = subprocess.run([py, "-c", "import monailabel, volmae"], capture_output=True).returncode == 0
        except OSError:
            continue
        if ok:
            return py
    pytest.skip(
        "MONAI Label not installed: create its environment as in bundles/hippocampus/docs/README.md "
        "(monailabel==0.8.5, volmae installed into it) and set VOLMAE_MONAILABEL_PYTHON to its python"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def test_monailabel_serves_the_hippocampus_bundle(msd_hippocampus, tmp_path):
    py = _monailabel_python()
    # a bundle with weights: one quick epoch on four real cases
    root = copy_bundle("hippocampus", tmp_path / "bundles")
    run_workflow(
        str(root / "train.json"),
        **{"train#dataset#data": "$volmae.bundle.fold_items(@dataset_dir, 0, 'train', limit=4)"},
        **{"validate#dataset#data": "$volmae.bundle.fold_items(@dataset_dir, 0, 'val', limit=2)"},
        **{"train#trainer#max_epochs": 1, "val_interval": 1, "device": "cpu"},
    )
    app = tmp_path / "app"
    prefix = subprocess.run([py, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True).stdout
    src_app = Path(prefix.strip()) / "monailabel" / "sample-apps" / "monaibundle"  # where `monailabel apps` finds it
    if not src_app.is_dir():
        pytest.skip(f"MONAI Label's monaibundle sample app not found at {src_app}")
    shutil.copytree(src_app, app)
    shutil.copytree(root, app / "model" / "hippocampus", symlinks=False, ignore=shutil.ignore_patterns("runs"))
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    scan = msd_hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    for case in ("hippocampus_001", "hippocampus_003", "hippocampus_004"):  # labeled studies for app training
        shutil.copy(msd_hippocampus / "imagesTr" / f"{case}.nii.gz", studies)
        shutil.copy(msd_hippocampus / "labelsTr" / f"{case}.nii.gz", studies / "labels" / "final")

    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(py).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [py, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "models", "hippocampus",
           "--conf", "zoo_source", "github", "--conf", "sam2", "false"]  # fmt: skip
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(180):
            try:
                info = json.loads(_get(f"{base}/info/"))
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(1)
        else:
            pytest.fail("MONAI Label did not start in 180 s:\n" + (tmp_path / "server.log").read_text()[-3000:])
        labels = info["models"]["hippocampus"]["labels"]
        assert labels["anterior"] == 1 and labels["posterior"] == 2

        req = urllib.request.Request(f"{base}/infer/hippocampus?image=hippocampus_001&output=image", method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            (tmp_path / "ml_seg.nii.gz").write_bytes(r.read())

        # training from the app: configs/train.json with MONAI Label's overrides (datalist, epochs, device ...)
        final = app / "model" / "hippocampus" / "models" / "model_final.pt"
        before = final.stat().st_mtime_ns
        body = json.dumps({"max_epochs": 1, "device": "cpu", "val_split": 0.34, "multi_gpu": False}).encode()
        req = urllib.request.Request(
            f"{base}/train/hippocampus?run_sync=true", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=600) as r:
            assert r.status == 200
        assert final.stat().st_mtime_ns > before, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        server.terminate()
        server.wait(30)
        log.close()

    seg, ref = nib.load(tmp_path / "ml_seg.nii.gz"), nib.load(scan)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    values = np.asarray(seg.dataobj)
    assert set(np.unique(values)) <= {0, 1, 2}
    done = infer(InferConfig([str(scan)], bundle=str(root), output=str(tmp_path / "cli.nii.gz"), quiet=True))
    assert np.array_equal(values, np.asarray(nib.load(done[0].label_map).dataobj))
