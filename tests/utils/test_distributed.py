"""Data-parallel runs under torchrun on the CPU (gloo, 2 processes): the same training as one process at the
doubled batch, a killed rank stops the job with an error instead of a hang, and a resume on another world size."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import stage_command
from volmae.errors import ConfigError
from volmae.utils.distributed import Dist, DistributedError, collective_failure, init_distributed

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def stage(name, task, out, batch, *extra, ranks=1, epochs=2):
    # training validates every epoch on the held-out cases (a descriptive curve: no case leaves the 4 training ones)
    own = ["--val-every", "1", "--val-on-held-out"] if name == "train" else ["--num-pictures", "0"]
    return stage_command(name, task, out, *own, *extra, epochs=epochs, batch=batch, ranks=ranks)


def run(cmd, timeout=600):
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def weights(path):
    return torch.load(path, weights_only=True)["weights"]


@pytest.mark.parametrize("name, extra", [("pretrain", []), ("train", []), ("pretrain", ["--preset", "resenc-tiny"])])
def test_two_ranks_train_like_one_process_at_the_doubled_batch(synthetic_task, tmp_path, name, extra):
    """4 training volumes: 1 process x batch 2 and 2 ranks x batch 1 take the same 2 steps per epoch on the same
    crops, masks and flips; only the order of the gradient sums differs (the third case: S3D's block masks)."""
    run(stage(name, synthetic_task, tmp_path / "one", 2, *extra))
    two = run(stage(name, synthetic_task, tmp_path / "two", 1, *extra, ranks=2))
    assert "2 process(es) on cpu x 1 volumes x 2 crops = 4 crops per optimizer step" in two.stdout
    a, b = weights(tmp_path / "one" / "model.pt"), weights(tmp_path / "two" / "model.pt")
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-4, f"{name}: 2 ranks differ from 1 process by {diff}"
    ha = json.loads((tmp_path / "one" / "history.json").read_text())
    hb = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [h["step"] for h in ha] == [h["step"] for h in hb] == [2, 4]
    for x, y in zip(ha, hb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        if name == "train":  # validation: each rank scores half the held-out cases, the means are reduced
            assert x["val_dice"] == pytest.approx(y["val_dice"], abs=1e-4)
    # without each rank's own share of the batch (here: a different seed), the runs would be far apart
    run(stage(name, synthetic_task, tmp_path / "other", 2, "--seed", "1", *extra))
    far = max(
        (a[k].float() - v.float()).abs().max().item() for k, v in weights(tmp_path / "other" / "model.pt").items()
    )
    assert far > 100 * max(diff, 1e-7)


def _rank_pid(out: Path, rank: int) -> int | None:
    """The pid of the worker process of ``rank`` whose command line names ``out``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if str(out) not in (proc / "cmdline").read_bytes().decode(errors="ignore"):
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return int(proc.name)
    return None


def signal_rank(task, out, rank: int, sig: int, epochs: int = 20) -> tuple[int, str, float]:
    """Start a 2-rank pretraining under torchrun, send ``sig`` to ``rank`` once a checkpoint exists, wait for the
    job: ``(exit status, stderr, seconds from the signal to the end)``."""
    cmd = stage("pretrain", task, out, 1, "--checkpoint-every-steps", "1", ranks=2, epochs=epochs)
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    pid = _rank_pid(out, rank)
    assert pid is not None and job.poll() is None, "the job ended before a rank could be signalled"
    os.kill(pid, sig)
    t = time.time()
    _, err = job.communicate(timeout=180)  # no hang
    return job.returncode, err, time.time() - t


def test_a_killed_rank_stops_the_job_and_it_resumes_on_one_process(synthetic_task, tmp_path):
    out = tmp_path / "run"
    code, err, seconds = signal_rank(synthetic_task, out, 1, signal.SIGKILL)
    assert code != 0 and seconds < 120  # torchrun tears the job down
    assert "SIGKILL" in err or "Signal 9" in err or "a collective with the other ranks failed" in err, err[-2000:]
    assert not (out / "model.pt").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["training"]["state"]["world_size"] == 2 and ckpt["training"]["state"]["step"] >= 1
    # one process continues the two-rank run: the same global batch of 2 volumes per step
    resumed = run(stage("pretrain", synthetic_task, out, 2, "--resume", epochs=20))
    assert "pretrained model" in resumed.stdout
    assert [h["step"] for h in json.loads((out / "history.json").read_text())] == list(range(2, 41, 2))


def test_sigterm_to_one_rank_stops_all_ranks_after_the_same_step(synthetic_task, tmp_path):
    out = tmp_path / "run"
    _, err, _ = signal_rank(synthetic_task, out, 0, signal.SIGTERM)  # e.g. a scheduler pre-empting one process
    stops = re.findall(r"SIGTERM: checkpoint saved at epoch \d+, step (\d+)", err)
    assert len(stops) == 2 and stops[0] == stops[1], err[-3000:]  # both ranks, the same step, no hang
    assert "a collective with the other ranks failed" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["training"]["state"]["step"] == int(stops[0])
    run(stage("pretrain", synthetic_task, out, 1, "--resume", ranks=2, epochs=20))
    assert [h["step"] for h in json.loads((out / "history.json").read_text())] == list(range(2, 41, 2))


def _lost_peer(mode: str, port: int, tmp_path: Path) -> str:
    """Two hand-started ranks (no torchrun agent to tear them down); rank 1 exits or hangs, rank 0 reduces."""
    script = tmp_path / "lost.py"
    script.write_text(
        "import os, sys, time, torch\n"
        "from volmae.utils.distributed import init_distributed\n"
        "d, _ = init_distributed(torch.device('cpu'), timeout=3.0)\n"
        "d.sum([1.0])\n"
        "if d.rank == 1:\n"
        f"    os._exit(0) if {mode == 'exit'} else time.sleep(30)\n"
        "d.sum([1.0])\n"
    )
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    one = subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": "1"}, stderr=subprocess.DEVNULL)
    zero = subprocess.run([sys.executable, str(script)], env={**env, "RANK": "0"}, capture_output=True, text=True)
    one.kill()
    one.wait()
    assert zero.returncode != 0
    return zero.stderr


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_lost_peer_is_an_error_not_a_hang(tmp_path, mode):
    t = time.time()
    err = _lost_peer(mode, 29500 + os.getpid() % 400 + (mode == "hang"), tmp_path)
    assert "DistributedError: rank 0 of 2: a collective with the other ranks failed" in err, err[-2000:]
    assert "--resume" in err and time.time() - t < 60


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d, device = init_distributed(torch.device("cpu"))
    assert d == Dist() and device == torch.device("cpu") and not d.enabled and d.is_main
    assert d.sum([1.5, 2]) == [1.5, 2.0] and d.any(True) and not d.any(False)
    d.barrier()


def test_failure_classification_and_bad_settings(monkeypatch):
    assert collective_failure(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1"))
    assert not collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    msg = str(Dist(1, 4).lost(RuntimeError("[x/y.cc:78] Timed out waiting 5000ms for recv. More text")))
    assert msg.startswith("rank 1 of 4: a collective with the other ranks failed (Timed out waiting 5000ms for recv)")
    assert isinstance(Dist(1, 4).lost(RuntimeError("x")), DistributedError)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="dist_timeout=0"):
        init_distributed(torch.device("cpu"), timeout=0)


def test_bad_lr_scaling_is_refused(synthetic_task, tmp_path):
    from volmae.engine.pretrain import PretrainConfig, pretrain

    with pytest.raises(ConfigError, match="lr_scaling='cubic'"):
        pretrain(PretrainConfig(str(synthetic_task), str(tmp_path / "x"), lr_scaling="cubic", device="cpu"))
