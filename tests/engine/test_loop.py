"""The training loop's guarantees: exact resume (mid-epoch too), SIGTERM checkpoints, non-finite loss handling."""

import math
import os
import signal

import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, RandGaussianNoised, RandSpatialCropd

from volmae.artifact import ModelArtifact, Provenance, Task
from volmae.data.transforms import get_preprocessing
from volmae.engine.loop import (
    LoopConfig,
    TrainingError,
    TrainingInterrupted,
    TrainLoop,
    lr_factor,
    warmup_cosine,
)
from volmae.errors import CheckpointError, VolmaeError
from volmae.networks.registry import NetworkConfig
from volmae.utils.optim import param_groups
from volmae.utils.runtime import as_layout, channels_last


class Stop(Exception):
    pass


# What the loop stores about the toy network it trains (it never builds one): a one-class segmentation task.
TOY = (
    NetworkConfig("dynunet", "toy", {"in_channels": 1, "out_channels": 1}, None, (4, 4, 4)),
    Task(get_preprocessing("mri", roi_size=(4, 4, 4)), 1, {0: "background"}),
    Provenance(stage="test"),
)


def toy_run(out, epochs=3, resume=False, on_step=None, batch=2, layout=None, max_steps=None):
    """``layout`` None: the toy network; "plain" / "channels_last": one with a 4 -> 4 channel 3^3 convolution (whose
    weight's memory order differs between the layouts) and no dropout (its mask follows memory order), trained in
    that layout."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Dropout(0.3), torch.nn.Conv3d(4, 1, 1))
    if layout is not None:
        model[1] = torch.nn.Conv3d(4, 4, 3, padding=1)
    on_cl = layout == "channels_last" and channels_last(model, torch.device("cpu"))
    items = [{"image": torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(i))} for i in range(5)]
    ds = Dataset(
        items, Compose([RandSpatialCropd("image", (4, 4, 4), random_size=False), RandGaussianNoised("image", prob=0.5)])
    )
    loop = TrainLoop(
        model,
        param_groups(model, 0.01),
        LoopConfig(
            out,
            epochs,
            1e-2,
            warmup_epochs=1,
            seed=3,
            checkpoint_every_steps=1,
            quiet=True,
            batch_size=batch,
            max_steps=max_steps,
        ),
        *TOY,
    )
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        if on_step:
            on_step(loop, calls["n"])
        x = as_layout(batch["image"], on_cl)
        return (model(x) - x.flip(2)).pow(2).mean(), x.shape[0]

    loop.fit(ds, step, resume=resume)
    return model.state_dict(), loop


@pytest.mark.parametrize("stop_at", [2, 3, 5])  # mid-epoch, epoch end, mid-epoch of the second epoch
def test_resume_after_a_crash_is_bitwise_identical(tmp_path, stop_at):
    reference, _ = toy_run(tmp_path / "ref")

    def crash(loop, n):
        if n == stop_at:
            raise Stop  # as if killed: the checkpoint of step n-1 is on disk

    with pytest.raises(Stop):
        toy_run(tmp_path / "run", on_step=crash)
    resumed, loop = toy_run(tmp_path / "run", resume=True)
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k
    assert loop.state.epoch == 3 and loop.state.step == 9
    assert [h["epoch"] for h in loop.state.history] == [1, 2, 3]


def test_an_exact_step_budget_cuts_the_last_epoch_and_spans_the_schedule(tmp_path):
    """5 volumes in batches of 2: 3 steps per epoch; 7 steps are 3 epochs, the last one step long, and the
    learning rate follows warmup + cosine over exactly 7 steps."""
    lrs = []
    _, loop = toy_run(
        tmp_path / "run", epochs=99, max_steps=7, on_step=lambda lp, n: lrs.append(lp.optimizer.param_groups[0]["lr"])
    )
    assert loop.epochs == 3 and loop.state.epoch == 3 and loop.state.step == 7
    assert [h["step"] for h in loop.state.history] == [3, 6, 7]
    assert lrs == pytest.approx([1e-2 * warmup_cosine(s, 7, 3) for s in range(7)])
    assert lrs[-1] < lrs[-2]  # the cosine ends at the budget, not at a whole number of epochs (9 steps)


@pytest.mark.parametrize("stop_at", [5, 7])  # mid-epoch; the one step of the cut final epoch
def test_resume_under_an_exact_step_budget_is_bitwise_identical(tmp_path, stop_at):
    reference, _ = toy_run(tmp_path / "ref", max_steps=7)

    def crash(loop, n):
        if n == stop_at:
            raise Stop

    with pytest.raises(Stop):
        toy_run(tmp_path / "run", on_step=crash, max_steps=7)
    resumed, loop = toy_run(tmp_path / "run", resume=True, max_steps=7)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert loop.state.step == 7 and [h["step"] for h in loop.state.history] == [3, 6, 7]
    calls = []
    again, loop = toy_run(tmp_path / "run", resume=True, max_steps=7, on_step=lambda lp, n: calls.append(n))
    assert calls == [] and loop.state.step == 7  # a finished budget trains no further
    assert all(torch.equal(reference[k], again[k]) for k in reference)


def test_a_step_budget_below_one_is_refused(tmp_path):
    with pytest.raises(VolmaeError, match="max_steps=0"):
        toy_run(tmp_path / "run", max_steps=0)


@pytest.mark.parametrize("first, then", [("plain", "channels_last"), ("channels_last", "plain")])
def test_resume_in_the_other_memory_layout_continues_the_same_run(tmp_path, first, then, monkeypatch):
    """A checkpoint's optimizer moments keep the strides they were saved with; the fused AdamW walks them as flat
    memory. Resumed in the other layout, they are re-laid to their weights' layout, and the run continues as the
    uninterrupted one (to float rounding: the two layouts sum in other orders)."""
    reference, _ = toy_run(tmp_path / "ref", layout=first)

    def crash(loop, n):
        if n == 5:
            raise Stop

    with pytest.raises(Stop):
        toy_run(tmp_path / "run", on_step=crash, layout=first)
    resumed, loop = toy_run(tmp_path / "run", resume=True, layout=then)
    assert loop.state.step == 9
    assert next(iter(loop.optimizer.state.values()))["exp_avg"].stride() == next(loop.model.parameters()).stride()
    for k in reference:
        assert torch.allclose(reference[k], resumed[k], rtol=1e-4, atol=1e-6), k
    # without re-laying the moments the same resume goes wrong, silently: what the comparison above guards
    monkeypatch.setattr("volmae.engine.loop.match_state_layouts", lambda optimizer: None)
    with pytest.raises(Stop):
        toy_run(tmp_path / "bad", on_step=crash, layout=first)
    wrong, _ = toy_run(tmp_path / "bad", resume=True, layout=then)
    assert not all(torch.allclose(reference[k], wrong[k], rtol=1e-4, atol=1e-6) for k in reference)


def test_channels_last_only_for_convolutions_on_the_cpu():
    conv = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3), torch.nn.ConvTranspose3d(3, 2, 2, 2))
    assert channels_last(conv, torch.device("cpu"))
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not channels_last(torch.nn.Linear(3, 3), torch.device("cpu"))  # nothing to speed up
    assert not channels_last(conv, torch.device("cpu"), enabled=False)
    assert not channels_last(conv, torch.device("cuda"))  # unmeasured there: left as is
    x = torch.randn(2, 2, 4, 5, 6)
    y = as_layout(x, True)
    assert torch.equal(y, x) and y.is_contiguous(memory_format=torch.channels_last_3d)
    assert as_layout(x, False) is x


def test_resume_with_another_batch_continues_the_epoch(tmp_path):
    """A checkpoint from batch 2 (e.g. 2 ranks x 1) resumed at batch 3: the epoch goes on at the global batch that
    holds its next unseen volume, and the schedule at the same point of training."""

    def crash(loop, n):
        if n == 5:
            raise Stop  # epoch 2 (3 steps of 2 volumes), after its first step: 2 of its 5 volumes seen

    with pytest.raises(Stop):
        toy_run(tmp_path / "run", on_step=crash)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["training"]["state"]
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["world_size"], ckpt["batch_size"]) == (1, 1, 1, 2)
    _, loop = toy_run(tmp_path / "run", resume=True, batch=3)  # 2 // 3 = 0: epoch 2 restarts, 2 steps per epoch
    assert loop.state.epoch == 3 and loop.state.step == 6 and loop.state.batch_size == 3
    assert [h["epoch"] for h in loop.state.history] == [1, 2, 3]


def test_sigterm_saves_and_resume_completes(tmp_path):
    reference, _ = toy_run(tmp_path / "ref")

    def term(loop, n):
        if n == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="--resume"):
        toy_run(tmp_path / "run", on_step=term)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is not None
    resumed, _ = toy_run(tmp_path / "run", resume=True)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    def poison(loop, n):
        if n == 3:
            with torch.no_grad():
                loop.model[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="non-finite loss .* epoch 1, step 2"):
        toy_run(tmp_path / "run", on_step=poison)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["training"]["state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["weights"].values())


def test_resume_without_checkpoint_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint.pt"):
        toy_run(tmp_path / "empty", resume=True)


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_resume_with_other_parameter_groups_is_explained(tmp_path):
    toy_run(tmp_path / "run", epochs=1)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    groups = ckpt["training"]["optimizer"]["param_groups"]
    groups[0]["params"] = groups[0]["params"][:1]
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        toy_run(tmp_path / "run", resume=True)


def test_disk_full_keeps_the_last_good_checkpoint_and_says_so(tmp_path, monkeypatch):
    """ENOSPC while writing a checkpoint: the previous checkpoint survives intact, the run stops with a message
    naming the file and what to do, and --resume continues to the same final weights as an uninterrupted run."""
    import volmae.utils.io as io

    reference, _ = toy_run(tmp_path / "ref")
    real_save = torch.save

    def full_disk(loop, n):
        if n == 4:

            def no_space(obj, f, *a, **k):
                real_save(obj, f, *a, **k)  # half a file written, then the disk fills up
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(io.torch, "save", no_space)

    with pytest.raises(TrainingError, match=r"checkpoint.pt: cannot write \(No space left on device\)") as err:
        toy_run(tmp_path / "run", on_step=full_disk)
    assert "the previous checkpoint.pt is unchanged" in str(err.value) and "--resume" in str(err.value)
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no temp left
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["training"]["state"]["step"] == 3  # the step before the disk filled up
    monkeypatch.setattr(io.torch, "save", real_save)
    resumed, _ = toy_run(tmp_path / "run", resume=True)
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_resume_into_another_network_names_the_keys(tmp_path):
    toy_run(tmp_path / "run", epochs=1)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.Dropout(0.3), torch.nn.Conv3d(8, 1, 1))
    loop = TrainLoop(model, param_groups(model, 0.01), LoopConfig(tmp_path / "run", 1, 1e-2, quiet=True), *TOY)
    with pytest.raises(CheckpointError, match=r"shape \(file vs network\): 0.weight \(4, 1, 3, 3, 3\) vs \(8, 1"):
        loop.load_checkpoint()


def test_gradient_overflow_is_handled_by_the_scaler_not_a_crash(tmp_path):
    """fp16 AMP overflows show up as inf gradients; the GradScaler skips that step and lowers its scale, and training
    goes on. Forced on the CPU: an enabled scaler, and one step whose gradient overflows."""
    init = 2.0**16
    skipped = {}

    def overflow_once(loop, n):
        if n == 1:
            loop.scaler = torch.amp.GradScaler("cpu", init_scale=init, growth_interval=1000)
        if n == 4:
            w = loop.model[0].weight
            skipped["before"] = w.detach().clone()
            handle = w.register_hook(lambda g: (handle.remove(), g * float("inf"))[1])
        if n == 5:
            skipped["after"] = loop.model[0].weight.detach().clone()

    weights, loop = toy_run(tmp_path / "run", on_step=overflow_once)
    assert loop.scaler.get_scale() == init / 2  # one overflowing step: its update skipped, the scale halved
    assert torch.equal(skipped["before"], skipped["after"])
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert loop.state.step == 9 and all(math.isfinite(h["loss"]) for h in loop.state.history)


def test_the_checkpoint_is_the_model_file_plus_the_training_state(tmp_path):
    toy_run(tmp_path / "run", epochs=1)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert set(ckpt["training"]) == {"optimizer", "scaler", "state", "rng", "run_config"}
    saved = ModelArtifact.from_dict(ckpt, "checkpoint.pt")  # what a user can load from a checkpoint, too
    assert saved.provenance.steps == 3 and saved.network == TOY[0]


def test_a_checkpoint_of_volmae_0_1_0_resumes(tmp_path):
    """volmae 0.1.0 kept the training state at the top of checkpoint.pt; such a run still resumes."""
    reference, _ = toy_run(tmp_path / "ref")

    def crash(loop, n):
        if n == 4:
            raise Stop

    with pytest.raises(Stop):
        toy_run(tmp_path / "run", on_step=crash)
    path = tmp_path / "run" / "checkpoint.pt"
    new = torch.load(path, weights_only=True)
    old = {"format": "volmae-checkpoint", "version": 1, "kind": "dynunet", "config": new["network"],
           "task": new["task"], "model": new["weights"], **new["training"]}  # fmt: skip
    torch.save(old, path)
    resumed, _ = toy_run(tmp_path / "run", resume=True)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_the_sawtooth_schedule_warms_the_decoder_first_then_everything():
    total, warmup, first = 100, 10, 20
    enc = [lr_factor(s, total, warmup, 0.0, first, encoder=True) for s in range(total)]
    dec = [lr_factor(s, total, warmup, 0.0, first, encoder=False) for s in range(total)]
    assert enc[:first] == [0.0] * first  # the encoder holds still
    assert dec[:first] == [pytest.approx((s + 1) / first) for s in range(first)]  # the decoder warms up alone
    assert enc[first:] == dec[first:] == [warmup_cosine(s, total - first, warmup) for s in range(total - first)]
    assert lr_factor(5, total, warmup) == warmup_cosine(5, total, warmup)  # no decoder-first: the plain schedule


def test_param_groups_can_split_off_the_encoder():
    net = torch.nn.Module()
    net.encoder, net.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    plain = param_groups(net, 0.05)
    split = param_groups(net, 0.05, split_encoder=True)
    assert all("encoder" not in g for g in plain) and len(split) == 2 * len(plain)
    assert {id(p) for g in split if g["encoder"] for p in g["params"]} == {id(p) for p in net.encoder.parameters()}
