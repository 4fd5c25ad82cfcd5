"""SIGKILL a real ``volmae-train`` / ``volmae-pretrain`` process at a random point, ``--resume`` it, and get the
uninterrupted run's weights, bitwise."""

import json
import random
import signal
import subprocess
import time

import pytest
import torch

from tests.cli.conftest import MAINS
from tests.conftest import stage_command

EPOCHS = 8  # 2 steps per epoch: 16 steps, so a kill after step 1..4 lands mid-run even when steps take milliseconds


def stage_cmd(stage, task, out, *extra, epochs=3):
    """A tiny run (``epochs`` x 2 steps) of ``stage`` that checkpoints after every step."""
    val = ["--val-every", "0"] if stage == "train" else []
    return stage_command(stage, task, out, "--checkpoint-every-steps", "1", *val, *extra, epochs=epochs)


def step_of(ckpt_path):
    try:
        return torch.load(ckpt_path, weights_only=True)["training"]["state"]["step"]
    except Exception:  # noqa: BLE001 - not written yet
        return -1


@pytest.mark.parametrize("stage, extra", [("train", []), ("pretrain", []), ("pretrain", ["--preset", "resenc-tiny"])])
def test_sigkill_at_a_random_point_then_resume_matches_uninterrupted(synthetic_task, tmp_path, stage, extra):
    """(the third case: S3D pretraining of the ResEnc U-Net, whose masks and ratios must resume as drawn)"""
    kill_after = random.randint(1, 4)  # a checkpointed step; the kill lands while later steps run or write
    reference = stage_cmd(stage, synthetic_task, tmp_path / "ref", *extra, epochs=EPOCHS)
    ref = subprocess.run(reference, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen(stage_cmd(stage, synthetic_task, run, *extra, epochs=EPOCHS), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 300
    while step_of(run / "checkpoint.pt") < kill_after and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run finished before it could be killed (after step {kill_after})"
    killed_at = step_of(run / "checkpoint.pt")
    assert kill_after <= killed_at < 2 * EPOCHS, (kill_after, killed_at)  # killed mid-run
    assert not (run / "model.pt").exists()
    resumed = stage_cmd(stage, synthetic_task, run, "--resume", *extra, epochs=EPOCHS)
    res = subprocess.run(resumed, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["weights"]
    b = torch.load(run / "model.pt", weights_only=True)["weights"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{stage}: resumed weights differ (killed after step {killed_at})"


@pytest.mark.parametrize("stage", ["train", "pretrain"])
def test_steps_trains_an_exact_budget_whatever_the_epochs(synthetic_task, tmp_path, stage):
    """``--steps 3`` at 2 steps per epoch: an epoch of 2 steps, then one cut to 1 (``--epochs 3`` is replaced); the
    console script's ``main`` in this process (the subprocess runs above cover the script itself)."""
    out = tmp_path / "run"
    cmd = stage_cmd(stage, synthetic_task, out, "--steps", "3")
    assert cmd[1:3] == ["-m", f"volmae.cli.{stage}"]
    assert MAINS[f"volmae-{stage}"](cmd[3:]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 3]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["training"]["state"]["step"] == 3
