"""Ignite handlers the bundle configs use that MONAI does not provide.

``GradClipHandler``: MONAI's ``SupervisedTrainer`` has no gradient clipping, while volmae's own engine clips the
gradient norm at 1.0 for fine-tuning (ViT fine-tuning is prone to loss spikes). MONAI fires
``IterationEvents.BACKWARD_COMPLETED`` between ``backward()`` and ``optimizer.step()``, so clipping there is exact.
"""

from __future__ import annotations

import torch
from monai.engines.utils import IterationEvents

__all__ = ["GradClipHandler"]


class GradClipHandler:
    """Clip the global gradient norm of ``engine.network`` to ``max_norm`` after every backward pass (with AMP, the
    gradients are unscaled first, as ``torch.amp.GradScaler`` requires). The bundles use no gradient accumulation."""

    def __init__(self, max_norm: float = 1.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm={max_norm}: must be > 0")
        self.max_norm = float(max_norm)
        self.last_norm: float | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for p in engine.network.parameters() if p.grad is not None]
        self.last_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm))
