import nibabel as nib
import numpy as np
import pytest
import torch

import volmae.utils.runtime as runtime
from volmae.data.transforms import get_preprocessing
from volmae.errors import ConfigError
from volmae.inference.predictor import Predictor
from volmae.networks.registry import build_unetr

SMALL = dict(hidden_size=24, mlp_dim=48, num_layers=3, num_heads=2)


@pytest.mark.parametrize("regions", [None, {"a": [1, 2], "b": [2]}])
def test_prediction_is_in_the_original_space(tmp_path, regions):
    """An LPS, anisotropic, non-zero-origin CT comes back with its own shape and affine after RAS + resampling."""
    shape = (30, 26, 11)
    affine = np.array([[-0.8, 0, 0, 120.0], [0, -0.8, 0, 95.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    img = np.random.default_rng(0).normal(0, 200, shape).astype(np.float32)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(img, affine), str(path))
    prep = get_preprocessing("ct", roi_size=(16, 16, 16))
    model = build_unetr("vit-tiny", 1, 3, prep.roi_size, 8, 4, **SMALL).model
    if regions:
        model = build_unetr("vit-tiny", 1, 2, prep.roi_size, 8, 4, **SMALL).model  # one sigmoid output per region
    pred = Predictor(model, prep, torch.device("cpu"), sw_batch_size=2, regions=regions).predict_file(str(path))
    assert tuple(pred.labels.shape) == (1, *shape)  # one label map either way
    assert np.allclose(pred.affine.numpy(), affine, atol=1e-4)
    assert set(torch.unique(pred.labels).tolist()) <= {0, 1, 2}


def test_logits_cover_volumes_larger_and_smaller_than_the_roi():
    prep = get_preprocessing("mri", roi_size=(16, 16, 16))
    model = build_unetr("vit-tiny", 1, 2, prep.roi_size, 8, 4, **SMALL).model
    p = Predictor(model, prep, torch.device("cpu"), overlap=0.25, mode="constant")
    for size in [(10, 20, 33), (16, 16, 16)]:
        assert p.logits(torch.randn(1, 1, *size)).shape == (1, 2, *size)


@pytest.mark.parametrize("regions", [None, {"TC": [2, 3], "WT": [1, 2, 3], "ET": [3]}])
def test_discretize_from_logits_equals_from_probabilities(regions):
    model = build_unetr("vit-tiny", 1, 3, 16, 8, 4, **SMALL).model
    p = Predictor(model, get_preprocessing("mri", roi_size=(16, 16, 16)), torch.device("cpu"), regions=regions)
    logits = torch.randn(2, 3, 9, 10, 11) * 3
    probs = torch.sigmoid(logits) if regions else torch.softmax(logits, 1)
    assert torch.equal(p.discretize(logits, logits=True), p.discretize(probs))


def test_compiled_predictor_runs_windows_through_one_batch_shape(monkeypatch):
    shapes = []

    def fake_compile(net, **kwargs):  # the wiring, not inductor (tests/inference/test_compiled.py compiles)
        assert kwargs["dynamic"] is False
        return lambda x: shapes.append(tuple(x.shape)) or net(x)

    monkeypatch.setattr(torch, "compile", fake_compile)
    prep = get_preprocessing("mri", roi_size=(16, 16, 16))
    model = build_unetr("vit-tiny", 1, 2, prep.roi_size, 8, 4, **SMALL).model
    x = torch.randn(1, 1, 20, 30, 16)  # 2 x 3 windows at overlap 0.25: batches of 4 and 2
    eager = Predictor(model, prep, torch.device("cpu"), overlap=0.25).logits(x)
    fast = Predictor(model, prep, torch.device("cpu"), overlap=0.25, compile=True).logits(x)
    assert torch.allclose(fast, eager, atol=1e-5)
    assert set(shapes) == {(4, 1, 16, 16, 16)} and len(shapes) == 2


def test_cpu_bf16_runs_the_network_in_bf16_and_stitches_in_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)
    prep = get_preprocessing("mri", roi_size=(16, 16, 16))
    torch.manual_seed(0)
    model = build_unetr("vit-tiny", 1, 3, prep.roi_size, 8, 4, **SMALL).model
    seen = []
    model.encoder.blocks[0].mlp.linear1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 20, 30, 16), 3, 1, 1) * 3  # structured, not white noise
    fp32 = Predictor(model, prep, torch.device("cpu"), overlap=0.25).logits(x)
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = Predictor(model, prep, torch.device("cpu"), overlap=0.25, cpu_bf16=True).logits(x)
    assert set(seen) == {torch.bfloat16} and bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()  # bf16 rounding (8 bits of mantissa), not a bug
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() > 0.9


def test_cpu_bf16_warns_on_a_cpu_without_bf16_units(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: False)
    model = build_unetr("vit-tiny", 1, 2, 16, 8, 4, **SMALL).model
    with caplog.at_level("WARNING", logger="volmae.utils.runtime"):
        Predictor(model, get_preprocessing("mri", roi_size=(16, 16, 16)), torch.device("cpu"), cpu_bf16=True)
    assert "neither AMX nor" in caplog.text


def test_cpu_bf16_is_refused_on_cuda():
    model = build_unetr("vit-tiny", 1, 2, 16, 8, 4, **SMALL).model
    with pytest.raises(ConfigError, match="cpu_bf16=True on device cuda"):
        Predictor(model, get_preprocessing("mri", roi_size=(16, 16, 16)), torch.device("cuda"), cpu_bf16=True)


@pytest.mark.parametrize(
    "kw,match", [(dict(overlap=1.0), "overlap"), (dict(mode="mean"), "mode"), (dict(sw_batch_size=0), "sw_batch_size")]
)
def test_bad_arguments(kw, match):
    model = build_unetr("vit-tiny", 1, 2, 16, 8, 4, **SMALL).model
    with pytest.raises(ValueError, match=match):
        Predictor(model, get_preprocessing("mri", roi_size=(16, 16, 16)), torch.device("cpu"), **kw)


def test_largest_component_drops_islands():
    from volmae.inference.predictor import largest_component

    m = np.zeros((10, 10, 10), bool)
    m[1:5, 1:5, 1:5] = True
    m[8, 8, 8] = True
    m[5, 5, 5] = True  # touches the big block diagonally: 26-connected, kept
    out = largest_component(m)
    assert out.sum() == 4**3 + 1 and not out[8, 8, 8]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_tta_averages_flipped_probabilities():
    prep = get_preprocessing("mri", roi_size=(16, 16, 16))
    model = build_unetr("vit-tiny", 1, 3, prep.roi_size, 8, 4, **SMALL).model
    x = torch.randn(1, 1, 16, 16, 16)
    plain = Predictor(model, prep, torch.device("cpu"))
    tta = Predictor(model, prep, torch.device("cpu"), tta_flips=(0, 2))
    p = lambda t: torch.softmax(plain.logits(t), 1)  # noqa: E731
    expected = (p(x) + p(x.flip(2)).flip(2) + p(x.flip(4)).flip(4)) / 3
    assert torch.allclose(tta.probabilities(x), expected, atol=1e-5)
    assert torch.allclose(tta.probabilities(x).sum(1), torch.ones(1, 16, 16, 16), atol=1e-5)
    with pytest.raises(ValueError, match="tta_flips"):
        Predictor(model, prep, torch.device("cpu"), tta_flips=(3,))


def test_largest_component_in_segment_output():
    prep = get_preprocessing("mri", roi_size=(16, 16, 16))
    model = build_unetr("vit-tiny", 1, 3, prep.roi_size, 8, 4, **SMALL).model
    pred = Predictor(model, prep, torch.device("cpu"), largest_component=True)
    probs = torch.zeros(1, 3, 8, 8, 8)
    probs[:, 0] = 1
    probs[:, 1, 1:4, 1:4, 1:4], probs[:, 0, 1:4, 1:4, 1:4] = 1, 0
    probs[:, 1, 7, 7, 7], probs[:, 0, 7, 7, 7] = 1, 0
    seg = pred.discretize(probs)
    assert int((seg == 1).sum()) == 27


@pytest.mark.realdata
def test_predict_a_dicom_series_folder(dicom_crops):
    """A real DICOM study folder (one series inside) is segmented on its own grid, affine from the DICOM tags."""
    from volmae.data.readers import load_volume

    prep = get_preprocessing("hippocampus", roi_size=(16, 16, 16))
    model = build_unetr("vit-tiny", 1, 3, prep.roi_size, 8, 4, **SMALL).model
    pred = Predictor(model, prep, torch.device("cpu"), sw_batch_size=8).predict_file(str(dicom_crops / "Study1"))
    data, affine = load_volume(dicom_crops / "Study1")
    assert tuple(pred.labels.shape[1:]) == data.shape == (35, 51, 32)  # PROVENANCE.md: 35 x 51 x 32
    assert np.allclose(pred.affine.numpy(), affine, atol=1e-4)
