"""Masked-volume pretraining of a whole UNETR (over a ViT or a Primus encoder): shapes, no leak of masked voxels, a
UNETR's state dict, and the decoder moving into the fine-tuning network."""

import pytest
import torch

from tests.conftest import model_file
from volmae.artifact import load_pretrained
from volmae.errors import ConfigError
from volmae.networks.masked_unetr import MaskedUNETR
from volmae.networks.primus import PrimusEncoder
from volmae.networks.registry import build_mae, build_segmenter
from volmae.networks.unetr import UNETR
from volmae.networks.vit import ViTEncoder

ROI = (16, 16, 32)


ENCODERS = ["vit", "primus-patch", "primus-conv"]


def encoder(kind="vit", channels=1):
    if kind == "vit":
        return ViTEncoder(channels, ROI, 4, hidden_size=24, mlp_dim=48, num_layers=4, num_heads=2)
    tokenizer = kind.split("-")[1]
    return PrimusEncoder(channels, ROI, 4, hidden_size=24, num_layers=4, num_heads=2, tokenizer=tokenizer)


def model(ratio=0.6, feature_size=4, channels=1, kind="vit"):
    return MaskedUNETR(encoder(kind, channels), feature_size=feature_size, mask_ratio=ratio)


@pytest.mark.parametrize("kind", ENCODERS)
@pytest.mark.parametrize("channels", [1, 2])
def test_unetr_over_either_encoder(kind, channels):
    net = UNETR(encoder(kind, channels), 3, feature_size=4)
    assert net(torch.randn(2, channels, *ROI)).shape == (2, 3, *ROI)


@pytest.mark.parametrize("kind", ENCODERS)
@pytest.mark.parametrize("channels, ratio", [(1, 0.6), (2, 0.75)])
def test_shapes_and_mask_count(channels, ratio, kind):
    m = model(ratio, channels=channels, kind=kind)
    assert m.patch_size == (4, 4, 4) and m.grid_size == (4, 4, 8)
    loss, pred, mask = m(torch.randn(2, channels, *ROI), generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, 128, 64 * channels) and mask.shape == (2, 128)
    assert mask.sum(1).tolist() == [128 - round(128 * (1 - ratio))] * 2
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("kind", ENCODERS)
def test_masked_voxels_reach_neither_the_stem_nor_the_encoder(kind):
    torch.manual_seed(0)
    m = model(kind=kind).eval()
    x = torch.randn(1, 1, *ROI)
    mask = m.draw_mask(1, m.num_units, x.device, generator=torch.Generator().manual_seed(1)).mask
    x2 = x.clone()
    x2[m._voxel_mask(mask).bool()] += 100.0  # change only what is masked
    a, b = m.forward_encoder(x, mask), m.forward_encoder(x2, mask)
    assert torch.equal(a[0], b[0])  # the masked input the stem sees
    assert torch.allclose(a[1], b[1], atol=1e-5)
    out = [m.decode(*t) for t in (a, b)]
    assert torch.allclose(*out, atol=1e-4)
    # the visible voxels do reach it: the test can fail
    x3 = x.clone()
    x3[~m._voxel_mask(mask).bool()] += 1.0
    assert not torch.allclose(m.decode(*m.forward_encoder(x3, mask)), out[0], atol=1e-3)


@pytest.mark.parametrize("kind, preset", [("vit", "vit-tiny"), ("primus-conv", "primus-tiny-conv-unetr")])
def test_state_dict_is_a_unetr_plus_the_mask_token_and_every_parameter_learns(kind, preset):
    m = model(kind=kind)
    seg = build_segmenter(preset, 1, 3, ROI, patch_size=4, feature_size=4, num_layers=4).model
    assert set(m.state_dict()) - set(seg.state_dict()) == {"mask_token"}
    loss, _, _ = m(torch.randn(2, 1, *ROI))
    loss.backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []  # DDP needs them all
    assert m.mask_token.grad.abs().sum() > 0


def test_reconstruction_pictures():
    m = model()
    x = torch.randn(1, 1, *ROI)
    views = m.reconstruct(x, generator=torch.Generator().manual_seed(0))
    visible = views["mask"] == 0
    assert views["pasted"].shape == x.shape and torch.allclose(views["pasted"][visible], x[visible])


def _fine_tuned(built, path):
    seg, config = built
    return seg, load_pretrained(seg, config, path)


@pytest.mark.parametrize(
    "preset, kinds",
    [("vit-tiny", ("masked-unetr", "unetr")), ("primus-tiny-conv-unetr", ("primus-masked-unetr", "primus-unetr"))],
)
def test_fine_tuning_loads_encoder_and_decoder_but_not_the_head(tmp_path, preset, kinds):
    built = build_mae(preset, 1, 40, method="masked-unetr", feature_size=4)
    pre = built.model
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(1.0)  # differs from any fresh initialisation
    path = model_file(built, tmp_path / "pre.pt")
    target = build_segmenter(preset, 1, 3, 40, feature_size=4)
    assert (built.config.kind, target.config.kind) == kinds
    seg, rep = _fine_tuned(target, path)
    assert rep.ok and len(rep.decoder_loaded) > 0 and "decoder weights" in rep.summary()
    own = seg.state_dict()
    for key, value in pre.state_dict().items():
        if key == "mask_token" or key.startswith("head."):
            continue
        assert torch.equal(own[key], value), key
    assert not torch.equal(own["head.conv.conv.bias"][:1], pre.state_dict()["head.conv.conv.bias"])


def test_an_mae_checkpoint_loads_no_decoder_and_a_wrong_width_is_reported(tmp_path):
    mae = model_file(build_mae("vit-tiny", 1, 40), tmp_path / "mae.pt")
    _, rep = _fine_tuned(build_segmenter("vit-tiny", 1, 3, 40), mae)
    assert rep.ok and rep.decoder_loaded == []
    pre = model_file(build_mae("vit-tiny", 1, 40, method="masked-unetr", feature_size=4), tmp_path / "pre.pt")
    _, rep = _fine_tuned(build_segmenter("vit-tiny", 1, 3, 40, feature_size=8), pre)
    assert not rep.ok and "NOT LOADED stem." in rep.summary()


@pytest.mark.parametrize(
    "preset, kwargs, message",
    [
        ("nnformer-tiny", dict(method="masked-unetr"), "does not apply to the nnformer preset"),
        ("vit-tiny", dict(method="masked-volume"), "does not apply to the vit preset"),
        ("vit-tiny", dict(method="masked-unetr", decoder_depth=2), "decoder_depth"),
        ("vit-tiny", dict(method="masked-unetr", decoder_dim=64), "decoder_dim"),
        ("vit-tiny", dict(feature_size=8), "feature_size sizes the UNETR decoder"),
        ("primus-tiny", dict(method="masked-unetr"), "patch decoder.*primus-tiny-conv-unetr"),
        ("primus-tiny-conv-unetr", dict(decoder_depth=2), "reconstructs with the UNETR's own decoder"),
        ("primus-tiny-conv-unetr", dict(decoder_dim=64), "decoder_dim does not apply to method masked-unetr"),
        ("primus-tiny-conv-unetr", dict(method="mae", feature_size=8), "feature_size sizes the UNETR decoder"),
        ("primus-tiny-conv-unetr", dict(method="masked-volume"), "does not apply to the primus preset"),
    ],
)
def test_bad_method_options(preset, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_mae(preset, 1, 48, **kwargs)


def test_bad_mask_ratio():
    with pytest.raises(ValueError, match="mask_ratio=1.0"):
        model(1.0)
