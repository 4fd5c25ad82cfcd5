import pytest
import torch
from monai.inferers import SlidingWindowInferer

import volmae.utils.runtime as runtime
from volmae.errors import ConfigError
from volmae.inference.inferers import Bf16SlidingWindowInferer, cpu_bf16_network
from volmae.networks.registry import build_unetr

SMALL = dict(hidden_size=24, mlp_dim=48, num_layers=3, num_heads=2)
WINDOWS = dict(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)


def _unetr(seen: list | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_unetr("vit-tiny", 1, 3, (16, 16, 16), 8, 4, **SMALL).model.eval()
    if seen is not None:
        model.encoder.blocks[0].mlp.linear1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return model


def _volume() -> torch.Tensor:
    """``B C D H W`` = 1 1 20 30 16: structured (smoothed), not white noise, so argmax ties are rare."""
    torch.manual_seed(1)
    return torch.nn.functional.avg_pool3d(torch.randn(1, 1, 20, 30, 16), 3, 1, 1) * 3


@torch.no_grad()
def test_off_it_is_monai_sliding_window_inference_unchanged():
    model, x = _unetr(), _volume()
    ref = SlidingWindowInferer(**WINDOWS)(x, model)
    assert torch.equal(Bf16SlidingWindowInferer(**WINDOWS)(x, model), ref)


@torch.no_grad()
def test_on_the_windows_run_in_bf16_and_the_stitched_logits_are_fp32(amx):
    seen: list = []
    model, x = _unetr(seen), _volume()
    fp32 = SlidingWindowInferer(**WINDOWS)(x, model)
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = Bf16SlidingWindowInferer(**WINDOWS, cpu_bf16=True)(x, model)
    assert set(seen) == {torch.bfloat16} and bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()  # bf16 rounding (8 bits of mantissa), not a bug
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() > 0.9
    assert not torch.is_autocast_enabled("cpu")  # the autocast ends with the network call


def test_a_bf16_network_trains_with_fp32_outputs_and_grads(amx):
    seen: list = []
    model, x = _unetr(seen).train(), _volume()[..., :16, :16, :16]
    out = cpu_bf16_network(model)(x)
    assert set(seen) == {torch.bfloat16} and out.dtype == torch.float32
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_network_outputs_of_every_shape_come_back_fp32(amx):
    def net(x):
        return {"a": x @ x.transpose(-1, -2), "b": [x @ x, torch.ones(2, dtype=torch.long)]}

    out = cpu_bf16_network(net)(torch.randn(2, 4, 4))
    assert out["a"].dtype == torch.float32 and out["b"][0].dtype == torch.float32
    assert out["b"][1].dtype == torch.long


@pytest.mark.parametrize("word,value", [("true", True), ("True", True), ("false", False), ("FALSE", False)])
def test_cpu_bf16_takes_the_words_the_bundle_cli_passes(word, value):
    assert Bf16SlidingWindowInferer(**WINDOWS, cpu_bf16=word).cpu_bf16 is value


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_cpu_bf16_must_be_a_bool(bad):
    with pytest.raises(ConfigError, match=f"cpu_bf16={bad!r}"):
        Bf16SlidingWindowInferer(**WINDOWS, cpu_bf16=bad)


def test_inputs_off_the_cpu_are_refused(amx):
    x = torch.empty(1, 1, 16, 16, 16, device="meta")
    with pytest.raises(ConfigError, match="inputs on meta"):
        cpu_bf16_network(torch.nn.Identity())(x)


def test_warns_on_a_cpu_without_bf16_units(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: False)
    with caplog.at_level("WARNING", logger="volmae.utils.runtime"):
        Bf16SlidingWindowInferer(**WINDOWS, cpu_bf16=True)
    assert "neither AMX nor" in caplog.text
