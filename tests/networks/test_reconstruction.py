"""Mask sharding: data-parallel ranks mask their rows of the global batch exactly as one process masks it."""

import pytest
import torch

from volmae.networks.reconstruction import random_mask


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_the_rows_of_the_global_draw(world):
    whole = random_mask(world * 2, 20, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4))
    for rank in range(world):
        part = random_mask(2, 20, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4), (rank, world))
        rows = slice(2 * rank, 2 * rank + 2)
        assert torch.equal(part.mask, whole.mask[rows]) and torch.equal(part.ids_shuffle, whole.ids_shuffle[rows])
    # one process is the plain draw (unchanged numbers for single-process runs)
    plain = random_mask(2, 20, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4))
    noise = torch.rand(2, 20, generator=torch.Generator().manual_seed(4))
    assert torch.equal(plain.ids_shuffle, torch.argsort(noise, dim=1))


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_bad_shard(shard):
    with pytest.raises(ValueError, match=r"shard=\("):
        random_mask(2, 20, 0.75, torch.device("cpu"), shard=shard)


def _tiny_models():
    from tests.networks.test_mae import make_mae
    from tests.networks.test_masked_volume import model as make_model

    return {"mae": (make_mae(), (2, 1, 16, 16, 32)), "masked volume": (make_model(), (2, 1, 16, 24, 16))}


def _step(model, x, seed):
    model.zero_grad(set_to_none=True)
    loss, pred, mask = model(x, generator=torch.Generator().manual_seed(seed))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), pred.detach(), mask, grads


@pytest.mark.parametrize("kind", ["mae", pytest.param("masked volume", marks=pytest.mark.slow)])  # ~1-2 min to compile
def test_compiled_pass_equals_eager(kind):
    """compile_pass: the same mask (drawn eagerly from the same seed), loss, predictions and gradients as eager."""
    model, shape = _tiny_models()[kind]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    eager = _step(model, x, 5)
    model.compile_pass()
    for _ in range(2):  # the first call compiles, the second runs the cached graph
        compiled = _step(model, x, 5)
        assert model.compile_failed is None
        assert torch.equal(compiled[2], eager[2])
        assert torch.allclose(compiled[0], eager[0], rtol=1e-4, atol=1e-6)
        assert torch.allclose(compiled[1], eager[1], rtol=1e-4, atol=1e-5)
        assert compiled[3].keys() == eager[3].keys()
        for name, g in eager[3].items():
            assert torch.allclose(compiled[3][name], g, rtol=1e-3, atol=1e-6), name
    # a different seed masks differently: the comparison above can fail
    assert not torch.equal(_step(model, x, 6)[2], eager[2])


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    model, shape = _tiny_models()["mae"]
    x = torch.randn(*shape)
    eager = model(x, generator=torch.Generator().manual_seed(1))[0]

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model.compile_pass()
    with caplog.at_level("WARNING"):
        out = model(x, generator=torch.Generator().manual_seed(1))[0]
    assert model.compile_failed == "RuntimeError: no C++ compiler found"
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in caplog.text
    assert torch.equal(out, eager)
