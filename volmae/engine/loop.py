"""The optimisation loop shared by MAE pretraining and segmentation fine-tuning.

What it guarantees:

- **Exact resume.** Data randomness is a function of ``(seed, epoch)`` and each volume's index
  (:mod:`volmae.data.loading`), model randomness (masking, dropout) is re-seeded at each epoch start, and a
  checkpoint stores the position inside the epoch plus the RNG state at that point. ``resume=True`` starts the
  epoch's loader at that position and continues with bit-identical updates on the CPU.
- **One process or many.** Under ``torchrun`` each rank trains its share of every global batch through DDP; only
  rank 0 writes files; a resume may change the number of ranks (:mod:`volmae.utils.distributed`).
- **Nothing lost.** ``checkpoint.pt`` (the model artifact plus the training state, :mod:`volmae.artifact.model`)
  is written atomically at every epoch end, every ``checkpoint_every_steps`` steps and on SIGTERM; a non-finite
  loss stops the run with the batch's case files named and leaves the last good checkpoint in place.
- **An exact step budget** when ``max_steps`` is set: ``ceil(max_steps / steps per epoch)`` epochs, the last cut
  short, and the learning-rate schedule spans exactly ``max_steps`` steps (an epoch budget rounds to whole epochs).
- Warmup + cosine learning rate per step, per-group ``lr_scale`` (layer-wise decay), AMP on CUDA, gradient
  clipping, a tqdm bar, TensorBoard scalars and ``history.json``.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from volmae.artifact.model import ModelArtifact, Provenance, Task, read_file, utc_now
from volmae.data.loading import epoch_loader, epoch_seed, steps_per_epoch
from volmae.errors import CheckpointError, VolmaeError
from volmae.networks.registry import NetworkConfig
from volmae.networks.weights import load_state_exactly
from volmae.utils.distributed import Dist
from volmae.utils.io import atomic_save, atomic_write_json
from volmae.utils.optim import adamw
from volmae.utils.runtime import autocast, make_scaler, match_state_layouts, seed_all

__all__ = [
    "LoopConfig",
    "TrainLoop",
    "TrainingError",
    "TrainingInterrupted",
    "warmup_cosine",
    "lr_factor",
    "batch_cases",
    "training_state",
]

CHECKPOINT = "checkpoint.pt"
TRAINING_KEYS = ("optimizer", "scaler", "state", "rng", "run_config")


class TrainingError(VolmaeError, RuntimeError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


class TrainingInterrupted(VolmaeError, RuntimeError):
    """SIGTERM received: a checkpoint was written and the run stopped; ``--resume`` continues it."""


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_factor(
    step: int, total: int, warmup: int, min_ratio: float = 0.0, decoder_first: int = 0, encoder: bool = False
) -> float:
    """LR factor of a parameter group at ``step``: :func:`warmup_cosine`, after ``decoder_first`` steps in which the
    encoder's groups hold still (factor 0) while the others warm up linearly (the "sawtooth" schedule of the
    OpenMind benchmark: decoder-only warm-up, then whole-network warm-up and decay)."""
    if step < decoder_first:
        return 0.0 if encoder else (step + 1) / decoder_first
    return warmup_cosine(step - decoder_first, total - decoder_first, warmup, min_ratio)


def batch_cases(batch: Any) -> list[str]:
    """File names of the volumes in a MONAI batch (for error messages)."""
    img = batch.get("image") if isinstance(batch, Mapping) else None
    meta = getattr(img, "meta", {}) or {}
    names = meta.get("filename_or_obj", [])
    return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]


@dataclass
class LoopConfig:
    out_dir: Path
    max_epochs: int
    lr: float
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None
    amp: bool = True
    cpu_bf16: bool = False  # bf16 autocast on the CPU (volmae.utils.runtime.amp_dtype)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    checkpoint_every_steps: int = 0
    quiet: bool = False
    desc: str = "train"
    batch_size: int = 1  # volumes per rank per step
    num_workers: int = 0
    max_steps: int | None = None  # an exact optimizer-step budget; replaces max_epochs when set
    decoder_first_epochs: float = 0.0  # epochs of decoder-only warm-up before the whole schedule (lr_factor)


@dataclass
class LoopState:
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    world_size: int = 1  # ranks x batch_size of the run that wrote the state (a resume may change them)
    batch_size: int = 0


def training_state(checkpoint: Mapping) -> dict | None:
    """The training part of a loaded ``checkpoint.pt`` (under ``training``; volmae 0.1.0 kept it at the top), or
    ``None`` when the file holds none (a model file)."""
    if isinstance(checkpoint.get("training"), Mapping):
        return dict(checkpoint["training"])
    if all(k in checkpoint for k in TRAINING_KEYS[:4]):
        return {k: checkpoint.get(k) for k in TRAINING_KEYS}
    return None


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(s: Mapping) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


class TrainLoop:
    """Runs ``step_fn`` over epochs with checkpoints; see the module docstring for the guarantees.

    Args:
        model: the network (already on ``cfg.device``).
        param_groups: optimizer groups; an optional ``"lr_scale"`` per group multiplies the scheduled LR.
        cfg: loop settings.
        network: the network's config (every file written rebuilds it from this).
        task: what the network is trained for, stored in every file.
        provenance: where the model comes from (data, cases, seed, initial weights); each file written adds the
            steps and epochs done.
        run_config: the whole run's settings, stored in the checkpoint for the record.
        dist: this process's rank under ``torchrun`` (:mod:`volmae.utils.distributed`); only rank 0 writes files.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        param_groups: list[dict],
        cfg: LoopConfig,
        network: NetworkConfig,
        task: Task,
        provenance: Provenance,
        run_config: Mapping | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.model, self.cfg = model, cfg
        self.network, self.task, self.provenance = network, task, provenance
        self.dist = dist or Dist()
        # what a step function calls: the model itself, or under torchrun its DDP wrapper (gradient averaging)
        self.net = model
        if self.dist.enabled:
            cuda = cfg.device.type == "cuda"
            self.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[cfg.device] if cuda else None)
        self.run_config = dict(run_config or {})
        self._decoder_first = 0  # steps of decoder-only warm-up (fit sets it from cfg.decoder_first_epochs)
        for g in param_groups:
            g.setdefault("lr_scale", 1.0)
            g["lr"] = cfg.lr * g["lr_scale"]
        self.optimizer = adamw(param_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scaler = make_scaler(cfg.device, cfg.amp)
        self.state = LoopState()
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._writer = None
        self._stop = False
        self.epochs = cfg.max_epochs  # epochs of this run (with max_steps: known once fit() sees the dataset)

    # ------------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def artifact(self, selection: str = "") -> ModelArtifact:
        """The model as it is now, as the model file a user loads later (no optimizer)."""
        st = self.state
        provenance = replace(
            self.provenance,
            created=utc_now(),
            steps=st.step,
            epochs=st.epoch + (1 if st.batch_in_epoch else 0),
            selection=selection or self.provenance.selection,
        )
        return ModelArtifact.from_network(self.model, self.network, self.task, provenance)

    def save_checkpoint(self) -> Path:
        if not self.dist.is_main:
            return self.checkpoint_path
        ckpt = self.artifact(f"the state at epoch {self.state.epoch}, step {self.state.step}").to_dict()
        ckpt["training"] = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "rng": _rng_state(),
            "run_config": self.run_config,
        }
        return self._save(ckpt, self.checkpoint_path)

    def save_weights(self, name: str, selection: str = "") -> Path:
        """Write the model file ``name`` in the output folder; ``selection`` says why these weights (e.g. the last
        epoch's, or the best validated one's)."""
        return self._save(self.artifact(selection).to_dict(), self.out_dir / name)

    def _save(self, obj: dict, path: Path) -> Path:
        """Atomic save (rank 0 only); a failed write (disk full, quota, permissions) leaves the previous file
        untouched and stops the run with a message saying so."""
        if not self.dist.is_main:
            return path
        try:
            return atomic_save(obj, path)
        except OSError as e:
            kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written yet"
            resume = " and continue with --resume" if self.checkpoint_path.exists() else ""
            raise TrainingError(
                f"{path}: cannot write ({e.strerror or e}) at epoch {self.state.epoch}, step {self.state.step}; "
                f"{kept}. Free space in {path.parent}{resume}"
            ) from None

    def load_checkpoint(self) -> dict:
        """Restore the network, optimizer and loop state from ``checkpoint.pt``; returns the training state."""
        path = self.checkpoint_path
        saved = ModelArtifact.from_dict(data := read_file(path), str(path))
        ckpt = training_state(data)
        if saved.kind != self.network.kind or ckpt is None:
            raise CheckpointError(f"{path}: not a volmae {self.network.kind} training checkpoint")
        load_state_exactly(
            self.model,
            saved.weights,
            f"{path}: its network differs from this run's ({{why}}); "
            "resume with the same settings or use another output folder",
        )
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # same weights, other trainable set or parameter groups (e.g. an older volmae)
            raise CheckpointError(
                f"{self.checkpoint_path}: its optimizer state does not fit this run's ({e}); "
                "resume with the volmae version and settings that wrote it, or start a new output folder"
            ) from None
        match_state_layouts(self.optimizer)  # saved moments keep their strides; the weights may be channels-last
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = LoopState(**ckpt["state"])
        return ckpt

    # ------------------------------------------------------------------------------------------- logging
    def _log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        if not self.dist.is_main:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
                self._writer = False
        if self._writer:
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, step)

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self._stop = True

    # ------------------------------------------------------------------------------------------- the loop
    def fit(
        self,
        dataset: Any,
        step_fn: Callable[[Any], tuple[torch.Tensor, int]],
        on_epoch_end: Callable[[int], Mapping[str, float] | None] | None = None,
        monitor: str | None = None,
        resume: bool = False,
    ) -> LoopState:
        """Train on ``dataset`` for ``max_epochs`` (or exactly ``max_steps`` steps), ``cfg.batch_size`` volumes per
        rank per step (:func:`volmae.data.loading.epoch_loader`). ``step_fn(batch) -> (loss, n_samples)`` runs the
        forward pass through :attr:`net` (under autocast); ``on_epoch_end(epoch)`` may return metrics (every rank
        calls it, so it may run collectives); the best ``monitor`` value saves ``model_best.pt``."""
        cfg, d = self.cfg, self.dist
        steps = steps_per_epoch(len(dataset), cfg.batch_size, d.world_size)
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise VolmaeError(f"max_steps={cfg.max_steps}: must be >= 1")
        self.epochs = math.ceil(cfg.max_steps / steps) if cfg.max_steps else cfg.max_epochs
        rng_at_resume = None
        if resume:
            if not self.checkpoint_path.is_file():
                raise CheckpointError(f"--resume: no {CHECKPOINT} in {self.out_dir} to resume from")
            rng_at_resume = self.load_checkpoint()["rng"]
            self._rebatch(steps)
        self.state.world_size, self.state.batch_size = d.world_size, cfg.batch_size
        total = cfg.max_steps or self.epochs * steps
        warmup = int(round(cfg.warmup_epochs * steps))
        self._decoder_first = min(int(round(cfg.decoder_first_epochs * steps)), max(0, total - 1))
        handler_installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if handler_installed else None
        try:
            while self.state.epoch < self.epochs and self.state.step < total:
                loader = epoch_loader(
                    dataset,
                    cfg.batch_size,
                    cfg.seed,
                    self.state.epoch,
                    num_workers=cfg.num_workers,
                    rank=d.rank,
                    world_size=d.world_size,
                    skip=self.state.batch_in_epoch,
                )
                self._run_epoch(loader, steps, step_fn, total, warmup, rng_at_resume)
                rng_at_resume = None
                metrics = dict(on_epoch_end(self.state.epoch) or {}) if on_epoch_end else {}
                self._end_epoch(metrics, monitor)
        finally:
            if handler_installed:
                signal.signal(signal.SIGTERM, previous)
            if self._writer:
                self._writer.flush()
        return self.state

    def _rebatch(self, steps: int) -> None:
        """A checkpoint written by another number of ranks or another batch size: continue its epoch at the global
        batch that holds its next unseen volume (up to one global batch of that epoch is seen twice)."""
        st, cfg, d = self.state, self.cfg, self.dist
        old_world, old_batch = st.world_size, st.batch_size or cfg.batch_size
        if (old_world, old_batch) == (d.world_size, cfg.batch_size):
            return
        seen = st.batch_in_epoch * old_world * old_batch
        st.batch_in_epoch = seen // (d.world_size * cfg.batch_size)
        st.step = st.epoch * steps + st.batch_in_epoch
        if d.is_main:
            tqdm.write(
                f"[{cfg.desc}] resuming on {d.world_size} rank(s) x batch {cfg.batch_size} a run checkpointed on "
                f"{old_world} x {old_batch}: epoch {st.epoch + 1} continues at step {st.batch_in_epoch + 1} of {steps}"
            )

    def _run_epoch(self, loader, steps_per_epoch, step_fn, total, warmup, rng_at_resume) -> None:
        cfg, st, d = self.cfg, self.state, self.dist
        seed_all(epoch_seed(cfg.seed, st.epoch, stream=1))
        if rng_at_resume is not None and st.batch_in_epoch:
            _set_rng_state(rng_at_resume)  # model randomness (masks, dropout) as it was at the checkpoint
        first = st.batch_in_epoch
        last = min(steps_per_epoch, first + total - st.step)  # an exact step budget cuts the final epoch short
        self.model.train()
        bar = tqdm(
            total=last,
            desc=f"{cfg.desc} {st.epoch + 1}/{self.epochs}",
            disable=cfg.quiet or not d.is_main,
            leave=False,
            initial=first,
            dynamic_ncols=True,
        )
        t0, losses = time.time(), st.epoch_losses  # a resumed epoch keeps the losses of its first part
        for i, batch in enumerate(loader, start=first):
            if i >= last:
                break
            factor = lr_factor(st.step, total, warmup, cfg.min_lr_ratio, self._decoder_first)
            for g in self.optimizer.param_groups:
                f = lr_factor(st.step, total, warmup, cfg.min_lr_ratio, self._decoder_first, g.get("encoder", False))
                g["lr"] = cfg.lr * f * g["lr_scale"]
            with autocast(cfg.device, cfg.amp or cfg.cpu_bf16, cfg.cpu_bf16):
                loss, _ = step_fn(batch)
            value = loss.detach().float().item()
            # one collective: the mean loss over the ranks, and whether any rank's loss is non-finite (all stop)
            total_loss, bad = d.sum([value if math.isfinite(value) else 0.0, not math.isfinite(value)], cfg.device)
            if bad:
                here = ", ".join(batch_cases(batch)) or "unknown"
                where = f"batch cases: {here}" if not math.isfinite(value) else "on another rank (see its log)"
                raise TrainingError(
                    f"non-finite loss ({value}) at epoch {st.epoch + 1}, step {st.step}; {where}. The last good "
                    f"checkpoint is kept in {self.checkpoint_path}; lower the learning rate or check these volumes."
                )
            self.optimizer.zero_grad(set_to_none=True)
            d.call(self.scaler.scale(loss).backward)  # under torchrun DDP averages the gradients here
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            st.step += 1
            st.batch_in_epoch = i + 1
            losses.append(total_loss / d.world_size)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{cfg.lr * factor:.2e}")
            self._log_scalars({"train/loss": losses[-1], "train/lr": cfg.lr * factor}, st.step)
            if d.any(self._stop, cfg.device):  # SIGTERM on any rank stops every rank after the same step
                self.save_checkpoint()
                bar.close()
                raise TrainingInterrupted(
                    f"SIGTERM: checkpoint saved at epoch {st.epoch + 1}, step {st.step} in {self.checkpoint_path}; "
                    "rerun with --resume to continue"
                )
            if cfg.checkpoint_every_steps and st.step % cfg.checkpoint_every_steps == 0:
                self.save_checkpoint()
        bar.close()
        st.history.append(
            {
                "epoch": st.epoch + 1,
                "step": st.step,
                "loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": cfg.lr * lr_factor(max(0, st.step - 1), total, warmup, cfg.min_lr_ratio, self._decoder_first),
                "seconds": time.time() - t0,
            }
        )

    def _end_epoch(self, metrics: dict, monitor: str | None) -> None:
        st = self.state
        st.history[-1].update(metrics)
        if metrics:
            self._log_scalars({f"val/{k}": v for k, v in metrics.items()}, st.step)
        if monitor and monitor in metrics and metrics[monitor] > st.best_metric:
            st.best_metric, st.best_epoch = float(metrics[monitor]), st.epoch + 1
            self.save_weights(
                "model_best.pt", f"the best validation Dice ({st.best_metric:.4f}) at epoch {st.epoch + 1}"
            )
        st.epoch += 1
        st.batch_in_epoch = 0
        st.epoch_losses = []
        self.save_checkpoint()
        if not self.dist.is_main:
            return
        atomic_write_json(self.out_dir / "history.json", st.history)
        if not self.cfg.quiet:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in st.history[-1].items() if isinstance(v, float))
            tqdm.write(f"[{self.cfg.desc}] epoch {st.epoch}/{self.epochs}: {shown}")
