"""nnFormer encoder: stage shapes, window layout (local / shifted / global), nearest-size errors, layer ids."""

import pytest
import torch

from volmae.networks.nnformer_encoder import NnFormerEncoder, nearest_valid_sizes, stage_windows


def tiny(img=(16, 24, 16), patch=2, windows=(4, 0), **kw):
    return NnFormerEncoder(1, img, patch, 12, depths=(2, 1), num_heads=(2, 4), window_sizes=windows, **kw)


@pytest.mark.parametrize(
    "img, patch, depths, windows",
    [
        ((16, 24, 16), 2, (2, 1), (4, 0)),
        ((16, 32, 32), (2, 4, 4), (1, 1, 1), (2, 2, 0)),
        (32, 4, (2, 2, 1), (2, 2, 2)),
    ],
)
def test_stage_outputs(img, patch, depths, windows):
    n = len(depths)
    enc = NnFormerEncoder(2, img, patch, 12, depths, tuple(2**s for s in range(n)), windows)
    x = torch.randn(2, 2, *enc.img_size)
    deep, inter = enc.forward_intermediates(x, list(range(n)))
    for s, f in enumerate(inter):
        assert f.shape == (2, 12 * 2**s, *enc.grids[s])
    assert torch.equal(deep, inter[-1])
    assert torch.allclose(enc.forward_features(x), deep)
    assert enc.total_stride == tuple(p * 2 ** (n - 1) for p in enc.patch_size)


def test_windows_local_shifted_and_global():
    enc = tiny()
    assert enc.windows == [(4, 4, 4), (4, 6, 4)]  # stage 1 (0 = global) spans its whole 4 x 6 x 4 grid
    s0, s1 = enc.stages
    assert s0.shifted == [False, True] and s0.shift == (2, 2, 2)
    assert s1.shifted == [False] and s1.shift == (0, 0, 0)  # global attention is never shifted


def test_shifted_windows_carry_information_across_window_borders():
    torch.manual_seed(0)
    enc = NnFormerEncoder(1, (8, 8, 8), 2, 12, depths=(1,), num_heads=(2,), window_sizes=(2,)).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    t = enc.embed_input(x)
    y = enc.stages[0](t)
    t2 = t.clone()
    t2[..., 0, 0, 0] += 10.0 * torch.randn(12)  # token (0,0,0) is in window (0,0,0): other windows must not change
    y2 = enc.stages[0](t2)
    assert torch.allclose(y[..., 2:, 2:, 2:], y2[..., 2:, 2:, 2:], atol=1e-5)
    shifted = NnFormerEncoder(1, (8, 8, 8), 2, 12, depths=(2,), num_heads=(2,), window_sizes=(2,)).eval()
    z, z2 = shifted.stages[0](t), shifted.stages[0](t2)
    assert not torch.allclose(z[..., 1, 1, 1], z2[..., 1, 1, 1], atol=1e-5)  # reached through the shifted block


@pytest.mark.parametrize(
    "img, message",
    [
        ((40, 56, 40), r"nearest valid sizes: \(32, 32, 32\) or \(48, 64, 64\)"),
        ((64, 128, 160), r"stage 2 grid 10 is not a multiple of its window 8"),
    ],
)
def test_sizes_that_do_not_fit_name_the_nearest_valid_ones(img, message):
    with pytest.raises(ValueError, match=message):
        NnFormerEncoder(1, img, (2, 4, 4), 24, (1, 1, 1, 1), (1, 1, 1, 1), (4, 4, 8, 4))


def test_nearest_valid_sizes_are_valid():
    windows = (4, 4, 8, 4)
    lower, upper = nearest_valid_sizes((70, 100, 150), (2, 4, 4), windows)
    assert all(a <= b for a, b in zip(lower, (70, 100, 150))) and all(a >= b for a, b in zip(upper, (70, 100, 150)))
    stage_windows(lower, (2, 4, 4), windows)  # no error
    stage_windows(upper, (2, 4, 4), windows)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(patch=3), "must be even"),
        (dict(windows=(4,)), "equal length"),
        (dict(windows=(4, -1)), "window_sizes"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        NnFormerEncoder(1, 16, 2, 12, (1, 1), (5, 4), (4, 0))


def test_wrong_input_is_explained():
    with pytest.raises(ValueError, match="built for img_size=\\(16, 24, 16\\)"):
        tiny()(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="expected input B x 1"):
        tiny()(torch.randn(1, 2, 16, 24, 16))


def test_layer_ids_follow_depth():
    enc = tiny()
    ids = {n: enc.layer_id(n) for n, _ in enc.named_parameters()}
    assert {ids[n] for n in ids if n.startswith("embed.")} == {0}
    assert {ids[n] for n in ids if n.startswith(("stages.0.", "norms.0."))} == {1}
    assert {ids[n] for n in ids if n.startswith(("downs.0.", "stages.1.", "norms.1."))} == {2}
