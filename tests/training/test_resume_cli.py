"""SIGKILL a real ``volmae-train`` process mid-run, ``--resume`` it, and get the uninterrupted run's weights."""

import signal
import subprocess
import sys
import time

import torch


def train_cmd(task, out, *extra):
    return [
        sys.executable,
        "-m",
        "volmae.cli.train",
        "--dataset-dir",
        str(task),
        "--out-dir",
        str(out),
        "--roi-size",
        "16",
        "16",
        "16",
        "--feature-size",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--val-every",
        "0",
        "--checkpoint-every-steps",
        "1",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def step_of(ckpt_path):
    try:
        return torch.load(ckpt_path, weights_only=True)["state"]["step"]
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def test_sigkill_then_resume_matches_uninterrupted(synthetic_task, tmp_path):
    ref = subprocess.run(train_cmd(synthetic_task, tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(synthetic_task, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while step_of(run / "checkpoint.pt") < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = step_of(run / "checkpoint.pt")
    assert 3 <= killed_at < 6  # 3 epochs x 2 steps: killed mid-run
    assert not (run / "model.pt").exists()
    res = subprocess.run(train_cmd(synthetic_task, run, "--resume"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["model"]
    b = torch.load(run / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
