"""oneDNN linear layers (``volmae.utils.onednn``): equal to ``nn.Linear`` in values and gradients, turned only where
the rule says, and wired into both training engines."""

import copy
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from volmae.utils import onednn
from volmae.utils.onednn import OneDNNLinear, cpu_vendor, onednn_available, onednn_linear, use_onednn_linears
from volmae.utils.runtime import cpu_info

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def grads(fn, x, weight, bias):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias) if t is not None]
    out = fn(*leaves, None) if bias is None else fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), [t.grad for t in leaves]


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48), (3, 2, 4, 48)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_onednn_linear_equals_f_linear_with_gradients(shape, bias, transposed):
    torch.manual_seed(0)
    x = torch.randn(shape)
    if transposed:  # a non-contiguous input (e.g. a transposed token tensor)
        x = torch.randn(shape[:-2] + (shape[-1], shape[-2])).transpose(-1, -2)
        assert not x.is_contiguous() and x.shape == shape
    weight, b = torch.randn(32, 48), (torch.randn(32) if bias else None)
    out, g = grads(onednn_linear, x, weight, b)
    ref_out, ref_g = grads(F.linear, x, weight, b)
    assert out.shape == ref_out.shape == (*shape[:-1], 32)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for a, r in zip(g, ref_g, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_onednn_linear_skips_the_kernel_where_it_does_not_apply(monkeypatch):
    calls = []
    real = onednn._OneDNNLinearFn.apply
    monkeypatch.setattr(onednn._OneDNNLinearFn, "apply", lambda *a: calls.append(1) or real(*a))
    w = torch.randn(8, 16)
    onednn_linear(torch.randn(4, 16), w)
    assert len(calls) == 1  # fp32 on the CPU: oneDNN
    x16 = torch.randn(4, 16, dtype=torch.bfloat16)
    assert torch.equal(onednn_linear(x16, w.bfloat16()), F.linear(x16, w.bfloat16()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_linear(torch.randn(4, 16), w).dtype == torch.bfloat16  # autocast still applies
    v = torch.randn(16)  # one vector: no rows for the kernel
    assert torch.equal(onednn_linear(v, w), F.linear(v, w))
    assert len(calls) == 1


def test_use_onednn_linears_turns_only_wide_plain_linears():
    class LoRA(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(384, 768), nn.Linear(768, 192), nn.Linear(192, 192), LoRA(512, 512))
    keys = list(model.state_dict())
    expected = 1 if onednn_available() else 0
    assert use_onednn_linears(model, CPU, True) == expected
    assert [type(m).__name__ for m in model] == ["OneDNNLinear" if expected else "Linear", "Linear", "Linear", "LoRA"]
    assert list(model.state_dict()) == keys and isinstance(model[0], nn.Linear)
    assert use_onednn_linears(nn.Sequential(nn.Linear(192, 192)), CPU, True, min_features=128) == expected
    for device, enabled in [(torch.device("cuda"), True), (CPU, False)]:
        assert use_onednn_linears(nn.Sequential(nn.Linear(512, 512)), device, enabled) == 0
    with pytest.raises(ValueError, match="min_features=0"):
        use_onednn_linears(model, CPU, min_features=0)


@needs_onednn
@pytest.mark.parametrize("vendor, turned", [("AuthenticAMD", 1), ("GenuineIntel", 0), ("", 0)])
def test_by_default_only_amd_cpus_turn_their_layers(monkeypatch, vendor, turned):
    monkeypatch.setattr(onednn, "cpu_vendor", lambda: vendor)
    assert use_onednn_linears(nn.Sequential(nn.Linear(512, 512)), CPU) == turned  # enabled=None: where it pays
    assert use_onednn_linears(nn.Sequential(nn.Linear(512, 512)), CPU, True) == 1  # forced: any CPU
    assert use_onednn_linears(nn.Sequential(nn.Linear(512, 512)), CPU, False) == 0


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    assert cpu_vendor(str(amd)) == "AuthenticAMD"
    assert cpu_vendor(str(arm)) == "" and cpu_vendor(str(tmp_path / "none")) == ""
    assert cpu_info("cpu family", str(amd)) == "25" and cpu_info("CPU implementer", str(arm)) == "0x41"


@needs_onednn
def test_a_turned_model_copies_and_pickles():
    model = nn.Sequential(nn.Linear(384, 384))
    use_onednn_linears(model, CPU, True)
    x = torch.randn(2, 384)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(clone[0], OneDNNLinear)
        torch.testing.assert_close(clone(x), model(x))


@needs_onednn
@pytest.mark.realdata
def test_mae_step_on_real_mri_is_unchanged_by_onednn_linears(msd_hippocampus):
    """A ViT MAE 384 wide (every linear turned) on real hippocampus MRI crops: the same loss, gradients and, after
    two AdamW steps, weights as with ``nn.Linear`` (to float rounding)."""
    from volmae.networks.mae import MaskedAutoencoder
    from volmae.networks.vit import ViTEncoder
    from volmae.utils.optim import adamw, param_groups

    images = sorted((msd_hippocampus / "imagesTr").glob("*.nii.gz"))[:2]
    crops = []
    for path in images:
        v = np.asarray(nib.load(path).dataobj, np.float32)
        v = (v - v.mean()) / v.std()
        crops.append(np.pad(v, [(0, max(0, 32 - s)) for s in v.shape])[:32, :32, :32])
    x = torch.from_numpy(np.stack(crops)[:, None].copy())

    def run(turn):
        torch.manual_seed(0)
        enc = ViTEncoder(1, 32, 8, hidden_size=384, mlp_dim=1536, num_layers=2, num_heads=6)
        mae = MaskedAutoencoder(enc, decoder_dim=384, decoder_depth=1, decoder_heads=6)
        # qkv, out, 2 MLP per block (2 + 1 blocks), decoder embed and prediction (the patch embedding is a conv)
        assert use_onednn_linears(mae, CPU, turn) == (3 * 4 + 2 if turn else 0)
        opt = adamw(param_groups(mae, 0.05), lr=1e-3)
        losses = []
        for step in range(2):
            opt.zero_grad()
            loss = mae(x, generator=torch.Generator().manual_seed(step))[0]
            loss.backward()
            grad = {k: p.grad.clone() for k, p in mae.named_parameters() if p.grad is not None}
            opt.step()
            losses.append(loss.item())
        return losses, grad, mae.state_dict()

    (loss, grad, state), (ref_loss, ref_grad, ref_state) = run(True), run(False)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grad.keys() == ref_grad.keys()
    for k in grad:
        torch.testing.assert_close(grad[k], ref_grad[k], rtol=1e-3, atol=1e-5)
    for k in state:  # Adam moves each weight by ~lr = 1e-3 a step: a wrong update would be that far off
        torch.testing.assert_close(state[k], ref_state[k], rtol=1e-4, atol=1e-4)


class _Built(Exception):
    """Raised by the spy below: the engine got as far as turning its model, no need to train it."""


@pytest.mark.parametrize("stage", ["pretraining", "training"])
@pytest.mark.parametrize("flag", [None, True, False])
def test_both_engines_apply_the_onednn_flag(synthetic_task, tmp_path, monkeypatch, stage, flag):
    import importlib

    engine = importlib.import_module("volmae.engine." + ("pretrain" if stage == "pretraining" else "finetune"))
    seen = []

    def spy(model, device, enabled):
        seen.append((type(model).__name__, device.type, enabled))
        raise _Built

    monkeypatch.setattr(engine, "use_onednn_linears", spy)
    base = dict(dataset_dir=str(synthetic_task), out_dir=str(tmp_path), roi_size=(16, 16, 16), epochs=1)
    base.update(batch_size=2, device="cpu", quiet=True, onednn_linear=flag)
    with pytest.raises(_Built):
        if stage == "pretraining":
            engine.pretrain(engine.PretrainConfig(**base, num_pictures=0))
        else:
            engine.finetune(engine.FinetuneConfig(**base, feature_size=4))
    assert seen == [("MaskedAutoencoder" if stage == "pretraining" else "UNETR", "cpu", flag)]


@needs_onednn
def test_a_turned_layer_traces_as_f_linear_under_torch_compile():
    """While dynamo traces, the layer is a plain ``F.linear`` (inductor then picks its own kernel): the oneDNN op
    is not in the captured graph (it would be without the ``is_compiling`` check: dynamo traces the autograd
    function's forward)."""
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False))
        return gm.forward

    model = nn.Sequential(nn.Linear(384, 384), nn.GELU())
    use_onednn_linears(model, CPU)
    x = torch.randn(3, 384, requires_grad=True)
    out = torch.compile(model, backend=recording_backend)(x)
    out.sum().backward()
    assert len(graphs) == 1 and "linear" in graphs[0] and "_linear_pointwise" not in graphs[0]
    torch.testing.assert_close(out, F.gelu(F.linear(x, model[0].weight, model[0].bias)))
    assert x.grad is not None and x.grad.abs().sum() > 0
