"""The residual-encoder U-Net (volmae.networks.resenc): plans, shapes, the encoder interface, bad input."""

import pytest
import torch

from volmae.errors import ConfigError
from volmae.networks.registry import PRESETS, build_encoder, build_segmenter, fit_roi

SMALL = dict(filters=[4, 8, 16])  # 16^3 plans three stages: tiny widths keep the tests fast


@pytest.mark.parametrize("roi", [(16, 16, 16), (16, 24, 16)])
@pytest.mark.parametrize("channels,classes", [(1, 2), (2, 4)])
def test_segmenter_shapes(roi, channels, classes):
    net, config = build_segmenter("resenc-tiny", channels, classes, roi, **SMALL)
    assert config.kind == "resenc" and config.family == "resenc" and config.window == roi
    assert net(torch.randn(2, channels, *roi)).shape == (2, classes, *roi)
    # fully convolutional: any window the total stride divides
    assert net(torch.randn(1, channels, 8, 8, 16)).shape == (1, classes, 8, 8, 16)


@pytest.mark.parametrize("preset", sorted(k for k, v in PRESETS.items() if v.family == "resenc"))
def test_presets_plan_for_the_roi_and_truncate_their_blocks(preset):
    config = build_segmenter(preset, 1, 3, (40, 56, 40)).config  # hippocampus: 5 x 7 x 5 after three halvings
    enc = config.encoder
    assert enc["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert enc["blocks"] == list(PRESETS[preset].blocks[:4])
    assert enc["filters"][0] == PRESETS[preset].base_filters and max(enc["filters"]) <= PRESETS[preset].max_filters


def test_anisotropic_spacing_gets_in_plane_kernels_first():
    enc = build_segmenter("resenc-tiny", 1, 2, (16, 64, 64), spacing=(4.0, 1.0, 1.0)).config.encoder
    assert enc["kernel_size"][0] == [1, 3, 3] and enc["strides"][1] == [1, 2, 2]


def test_encoder_features_and_intermediates():
    enc, config = build_encoder("resenc-tiny", 1, (16, 16, 16), **SMALL)
    assert config.kind == "resenc-encoder" and not hasattr(enc, "head")
    x = torch.randn(2, 1, 16, 16, 16)
    feats = enc.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 4, 16, 16, 16), (2, 8, 8, 8, 8), (2, 16, 4, 4, 4)]
    assert torch.equal(enc.forward_features(x), feats[-1])
    assert [f.shape for f in enc.forward_intermediates(x, [0, 2])] == [feats[0].shape, feats[2].shape]
    assert enc.total_stride == (4, 4, 4) and enc.grid_size == (4, 4, 4)


def test_the_network_scripts_as_the_bundles_export_it():
    net = build_segmenter("resenc-tiny", 1, 3, (16, 16, 16), **SMALL).model.eval()
    x = torch.randn(1, 1, 16, 24, 16)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_bad_input_names_what_fits():
    net = build_segmenter("resenc-tiny", 1, 2, (16, 16, 16), **SMALL).model
    with pytest.raises(ValueError, match="expected input B x 1 x D x H x W"):
        net(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="multiple of the encoder's total stride"):
        net(torch.randn(1, 1, 16, 18, 16))


def test_ill_arguments_name_the_setting():
    with pytest.raises(ConfigError, match="takes no patch_size"):
        build_segmenter("resenc-tiny", 1, 2, 16, patch_size=8)
    with pytest.raises(ConfigError, match="blocks has 2 entries; expected one per stage"):
        build_segmenter("resenc-tiny", 1, 2, 16, blocks=[1, 1])
    with pytest.raises(ConfigError, match="too small to down-sample"):
        build_segmenter("resenc-tiny", 1, 2, (6, 6, 6))
    with pytest.raises(ConfigError, match="not divisible by the encoder's total stride"):
        build_encoder("resenc-tiny", 1, (16, 16, 16), strides=[[1, 1, 1], [2, 2, 2], [3, 2, 2]])
    assert fit_roi("resenc-tiny", (37, 50, 40)) == (40, 56, 40)
