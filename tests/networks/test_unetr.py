import pytest
import torch
from monai.networks.nets import UNETR as MonaiUNETR

from volmae.networks.registry import build_unetr
from volmae.networks.unetr import UNETR, default_skip_indices
from volmae.networks.vit import ViTEncoder
from volmae.networks.weights import monai_unetr_to_volmae, volmae_unetr_to_monai


@pytest.mark.parametrize("patch,size", [(8, (16, 24, 32)), (16, (32, 32, 32)), (4, (8, 8, 12))])
@pytest.mark.parametrize("channels,classes", [(1, 3), (2, 4)])
def test_shapes(patch, size, channels, classes):
    enc = ViTEncoder(channels, size, patch, hidden_size=24, mlp_dim=48, num_layers=4, num_heads=2)
    net = UNETR(enc, classes, feature_size=4)
    assert net(torch.randn(2, channels, *size)).shape == (2, classes, *size)
    assert len(net.skips) == len(default_skip_indices(4, net.levels)) == net.levels - 1


def test_default_skips_match_monai():
    assert default_skip_indices(12, 4) == [3, 6, 9]
    assert default_skip_indices(12, 3) == [4, 8]


def test_patch16_is_monai_unetr_layer_for_layer():
    roi = (32, 32, 32)
    kw = dict(feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4)
    monai_net = MonaiUNETR(1, 3, roi, qkv_bias=True, **kw).eval()
    ours = build_unetr(
        "vit-base",
        1,
        3,
        roi,
        16,
        kw["feature_size"],
        skip_norm=False,
        hidden_size=48,
        mlp_dim=96,
        num_heads=4,
        pos_embed_type="learnable",
    ).model.eval()
    ours.load_state_dict(monai_unetr_to_volmae(monai_net.state_dict()), strict=True)
    x = torch.randn(1, 1, *roi)
    assert torch.allclose(monai_net(x), ours(x), atol=1e-4)
    monai_net.load_state_dict(volmae_unetr_to_monai(ours.state_dict()), strict=True)


@pytest.mark.parametrize(
    "patch,kwargs,match",
    [
        ((8, 8, 4), {}, "isotropic power-of-two"),
        (6, {}, "isotropic power-of-two"),
        (8, dict(skip_indices=[1]), "needs 2 skip layers"),
        (8, dict(skip_indices=[1, 7]), "out of range"),
        (8, dict(out_channels=0), "out_channels"),
    ],
)
def test_bad_arguments(patch, kwargs, match):
    enc = ViTEncoder(1, 24, patch, hidden_size=24, mlp_dim=48, num_layers=4, num_heads=2)
    with pytest.raises(ValueError, match=match):
        UNETR(enc, **{"out_channels": 2, **kwargs})


def test_skip_norm_makes_the_decoder_blind_to_the_residual_stream_scale():
    """An MAE-pretrained residual stream can be ~25x its initial scale; with the skip LayerNorms the decoder sees
    the same skip features whatever that scale, without them it does not."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16)
    for skip_norm, same in ((True, True), (False, False)):
        enc = ViTEncoder(1, 16, 8, hidden_size=24, mlp_dim=48, num_layers=3, num_heads=2)
        net = UNETR(enc, 2, feature_size=4, skip_norm=skip_norm).eval()
        ref = net(x)
        original = enc.forward_intermediates

        def scaled(t, idx, original=original):
            deep, hidden = original(t, idx)
            return deep, [v * 50 for v in hidden]

        enc.forward_intermediates = scaled
        assert torch.allclose(net(x), ref, atol=1e-3) is same


@pytest.mark.parametrize("skip_norm", [True, False])
def test_scripts_with_torchscript_and_computes_the_same(skip_norm):
    """The MONAI model zoo exports a bundle's network with torch.jit.script (ckpt_export)."""
    net = build_unetr("vit-tiny", 2, 3, (16, 24, 16), 8, 4, skip_norm=skip_norm, num_layers=3).model.eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 2, 16, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    with pytest.raises(Exception, match=r"expected input B x 2 x 16 x 24 x 16"):
        scripted(torch.randn(1, 1, 16, 24, 16))
