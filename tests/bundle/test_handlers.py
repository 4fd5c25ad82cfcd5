"""Gradient clipping inside MONAI's SupervisedTrainer (between backward and the optimiser step)."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer

from volmae.bundle.handlers import GradClipHandler


def _trainer(handler, lr=0.0):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    data = [{"image": torch.randn(2, 4) * 100, "label": torch.full((2, 1), 1e3)}]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=torch.nn.MSELoss(),
        train_handlers=[handler],
    )


def test_gradients_are_clipped_before_the_step():
    clip = GradClipHandler(max_norm=0.5)
    trainer = _trainer(clip)
    trainer.run()
    assert clip.last_norm > 0.5  # the raw norm it saw was larger ...
    grads = torch.cat([p.grad.flatten() for p in trainer.network.parameters()])
    assert grads.norm() == pytest.approx(0.5, rel=1e-5)  # ... and the optimiser got the clipped gradient


def test_bad_max_norm():
    with pytest.raises(ValueError, match="max_norm=0"):
        GradClipHandler(0)
