"""What only a GPU can check: the CUDA paths agree with the CPU, bf16 autocast keeps the loss, and the MAE masking
and step make no host round trip. Skipped without CUDA (CI has none); ``benchmarks/gpu_checks.sh`` runs them on a
lent GPU together with the speed benchmarks."""

from __future__ import annotations

import contextlib

import pytest
import torch

from volmae.data.transforms import get_preprocessing
from volmae.inference.predictor import Predictor
from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.reconstruction import random_mask
from volmae.networks.registry import build_unetr
from volmae.networks.vit import ViTEncoder
from volmae.utils.optim import adamw, param_groups
from volmae.utils.runtime import autocast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run benchmarks/gpu_checks.sh)")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
SMALL = dict(hidden_size=96, mlp_dim=192, num_layers=3, num_heads=4)


def mae(size=(32, 32, 32)) -> MaskedAutoencoder:
    torch.manual_seed(0)
    enc = ViTEncoder(1, size, 8, hidden_size=96, mlp_dim=192, num_layers=2, num_heads=4)
    return MaskedAutoencoder(enc, decoder_dim=48, decoder_depth=2, decoder_heads=4, mask_ratio=0.75)


def same_grad(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both without a gradient (frozen: the position embeddings, MONAI blocks' unused norms), or both equal to float
    rounding."""
    if a.grad is None or b.grad is None:
        return a.grad is None and b.grad is None
    return torch.allclose(b.grad.to(a.device), a.grad, rtol=1e-3, atol=1e-5)


@contextlib.contextmanager
def no_host_sync():
    """Raise on any CUDA operation that waits for the device (``.item()``, a CPU copy, ``nonzero``...)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_mask_is_drawn_on_the_device_without_a_host_sync():
    with no_host_sync():
        m = random_mask(4, 216, 0.75, CUDA)
    assert m.mask.device.type == "cuda" and m.keep == 54
    assert torch.equal(m.mask.sum(1).cpu(), torch.full((4,), 162.0))


def test_a_bf16_pretraining_step_makes_no_host_sync_and_keeps_the_fp32_loss():
    model = mae().to(CUDA)
    opt = adamw(param_groups(model, 0.05), lr=1e-4)
    x = torch.randn(2, 1, 32, 32, 32, device=CUDA)
    m = model.draw_mask(2, model.num_units, CUDA)
    with torch.no_grad():
        fp32 = model.forward_masked(x, m)[0]
        with autocast(CUDA, True):
            bf16 = model.forward_masked(x, m)[0]
    assert abs(float(bf16) - float(fp32)) <= 0.02 * abs(float(fp32))
    with no_host_sync():  # the whole step as the engine runs it: mask, forward, backward, fused AdamW
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            with autocast(CUDA, True):
                loss = model(x)[0]
            loss.backward()
            opt.step()
    assert torch.isfinite(loss).item()


def test_the_cuda_forward_and_gradients_equal_the_cpus():
    cpu, gpu = mae(), mae().to(CUDA)
    x = torch.randn(2, 1, 32, 32, 32)
    m = cpu.draw_mask(2, cpu.num_units, CPU, generator=torch.Generator().manual_seed(0))
    loss_cpu = cpu.forward_masked(x, m)[0]
    loss_gpu = gpu.forward_masked(x.to(CUDA), type(m)(*(t.to(CUDA) for t in m[:3]), m.keep))[0]
    loss_cpu.backward()
    loss_gpu.backward()
    assert float(loss_gpu) == pytest.approx(float(loss_cpu), rel=1e-4)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        assert same_grad(a, b), name


def test_the_compiled_pass_equals_the_eager_one_on_cuda():
    eager, compiled = mae().to(CUDA), mae().to(CUDA)
    compiled.compile_pass()
    x = torch.randn(2, 1, 32, 32, 32, device=CUDA)
    for _ in range(2):  # the second call runs the compiled code from inductor's cache
        a = eager(x, generator=torch.Generator(CUDA).manual_seed(1))
        b = compiled(x, generator=torch.Generator(CUDA).manual_seed(1))
    assert compiled.compile_failed is None
    assert torch.equal(a[2], b[2]) and torch.allclose(a[0], b[0], rtol=1e-4)
    a[0].backward()
    b[0].backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert same_grad(p, q), name


@pytest.mark.parametrize("amp, compile, agree", [(False, False, 0.999), (True, False, 0.99), (True, True, 0.99)])
def test_sliding_window_on_cuda_segments_as_the_cpu_does(amp, compile, agree):
    prep = get_preprocessing("ct", roi_size=(32, 32, 32))
    torch.manual_seed(0)
    model = build_unetr("vit-tiny", 1, 3, prep.roi_size, 8, 8, **SMALL).model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 70, 60, 50, generator=g), 5, 1, 2) * 5  # 36 windows
    ref = Predictor(model, prep, CPU, amp=False).logits(x).argmax(1)
    out = Predictor(model.to(CUDA), prep, CUDA, amp=amp, compile=compile).logits(x.to(CUDA))
    assert out.dtype == torch.float32 and out.shape[2:] == x.shape[2:]
    assert (out.argmax(1).cpu() == ref).float().mean().item() >= agree
