"""Data-parallel training under ``torchrun`` (PyTorch DDP): process group, ranks, reductions, failure messages.

volmae's engines run unchanged as one process or as ``N`` processes started by ``torchrun`` (one node:
``--nproc_per_node N``; several: ``--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT``). torchrun sets
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and the rendezvous; :func:`init_distributed` then starts the process
group (NCCL on CUDA, one GPU per local rank; gloo on the CPU) with a collective timeout, so that a rank that died
stops the others with an error (:class:`DistributedError`) instead of a hang.

How N ranks train the same network as one process (the guarantees the tests check):

- **The global batch.** Every rank draws the same epoch permutation from ``(seed, epoch)``; step ``k``'s global batch
  is its ``k``-th block of ``N x B`` volumes and rank ``r`` takes the ``r``-th contiguous ``B`` of them
  (:class:`volmae.data.loading.RankBatches`). DDP averages the ranks' gradients, so N ranks at batch ``B`` take the
  steps one process takes at batch ``N x B``, up to floating-point summation order.
- **Augmentation** is seeded per volume from ``(seed, epoch, index)`` (:class:`volmae.data.loading.SeededItems`):
  a volume gets the same crops and flips on any number of ranks and data-loader workers.
- **Masks** (pretraining): every rank draws the mask noise of the whole global batch from the same generator and
  keeps its own rows (:attr:`volmae.networks.reconstruction.MaskedReconstruction.mask_shard`).
- Only rank 0 writes (checkpoints, ``model.pt``, history, TensorBoard, pictures, progress bars); every rank reads
  the checkpoint on ``--resume``, on any number of ranks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from volmae.errors import ConfigError, VolmaeError

__all__ = ["Dist", "DistributedError", "init_distributed", "shutdown_distributed", "collective_failure"]

_STARTED_HERE = False  # whether volmae started the process group (and so ends it)


class DistributedError(VolmaeError):
    """A collective failed or timed out: another rank died, was killed, or the network between nodes dropped."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``Dist()`` is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """``values`` summed over the ranks (float64, one collective; the values themselves on one rank)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        self.call(dist.all_reduce, t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
        return self.sum([1.0 if flag else 0.0], device)[0] > 0 if self.enabled else bool(flag)

    def barrier(self) -> None:
        if self.enabled:
            self.call(dist.barrier)

    def call(self, fn, *args, **kwargs):
        """Run a collective; a lost peer or a timeout becomes a :class:`DistributedError` naming this rank."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - backends raise RuntimeError or DistError subclasses
            if collective_failure(e):
                raise self.lost(e) from None
            raise

    def lost(self, e: BaseException) -> DistributedError:
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:200]  # drop the backend's source location
        return DistributedError(
            f"rank {self.rank} of {self.world_size}: a collective with the other ranks failed ({text}): another "
            "rank died, was killed or lost its network (its own log says why). Nothing written is lost: rerun "
            "with --resume to continue from the last checkpoint.pt, on any number of ranks"
        )


def collective_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failed or timed-out collective (as opposed to a bug in the step itself)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("Gloo", "gloo", "NCCL", "Connection closed by peer", "Connection reset", "timed out")
    )


def _timeout_seconds(timeout: float | None) -> float:
    value = timeout if timeout is not None else float(os.environ.get("VOLMAE_DIST_TIMEOUT", 1800))
    if value <= 0:
        raise ConfigError(f"dist_timeout={value}: must be > 0 seconds")
    return value


def init_distributed(device: torch.device, timeout: float | None = None) -> tuple[Dist, torch.device]:
    """Join the ``torchrun`` job described by the environment (a no-op for a single process).

    Returns this rank's :class:`Dist` and its device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA, else the CPU.
    ``timeout`` (seconds; default ``$VOLMAE_DIST_TIMEOUT`` or 1800) bounds every collective.
    """
    global _STARTED_HERE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s): start at most that many "
                "processes per node (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=_timeout_seconds(timeout)))
        _STARTED_HERE = True
    return Dist(dist.get_rank(), dist.get_world_size(), local), device


def shutdown_distributed() -> None:
    """End the process group if :func:`init_distributed` started it."""
    global _STARTED_HERE
    if _STARTED_HERE and dist.is_initialized():
        dist.destroy_process_group()
    _STARTED_HERE = False
