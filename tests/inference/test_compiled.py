import logging

import pytest
import torch
import torch.nn as nn

from volmae.inference.compiled import CompiledWindows


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.LeakyReLU(), nn.Conv3d(4, 3, 1)).eval()


def test_compiled_windows_match_eager_and_pad_the_last_batch():
    net = small_net()
    wrapped = CompiledWindows(net, batch=3)
    x = torch.randn(3, 1, 8, 8, 8)
    with torch.no_grad():
        full = wrapped(x)
        short = wrapped(x[:2])  # padded to 3 windows: the same compiled graph
        eager = net(x)
    assert wrapped.failed is None, wrapped.failed
    assert torch.allclose(full, eager, atol=1e-5) and torch.allclose(short, eager[:2], atol=1e-5)
    with pytest.raises(ValueError, match="compiled for batches of 3"), torch.no_grad():
        wrapped(torch.randn(4, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="batch=0"):
        CompiledWindows(net, batch=0)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    net = small_net()
    wrapped = CompiledWindows(net, batch=2)
    x = torch.randn(1, 1, 8, 8, 8)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = wrapped(x)
    assert torch.equal(out, net(x).detach())
    assert "no C++ compiler found" in wrapped.failed and "running the network eagerly" in caplog.text


def test_training_and_grad_mode_run_eagerly(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled outside inference"))
    net = small_net()
    wrapped = CompiledWindows(net, batch=2)
    x = torch.randn(2, 1, 8, 8, 8)
    assert torch.equal(wrapped(x), net(x))  # grad enabled
