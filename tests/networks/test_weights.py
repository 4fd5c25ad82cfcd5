import pytest
import torch

from volmae.errors import CheckpointError
from volmae.networks.registry import build_network, build_unetr
from volmae.networks.weights import POS_EMBED_KEY, encoder_state_from, resample_pos_embed

SMALL = dict(hidden_size=24, mlp_dim=48, num_layers=4, num_heads=2)


def test_resample_identity_and_shape():
    pe = torch.randn(1, 2 * 3 * 4, 6)
    assert torch.allclose(resample_pos_embed(pe, (2, 3, 4), (2, 3, 4)), pe, atol=1e-6)
    assert resample_pos_embed(pe, (2, 3, 4), (4, 6, 8)).shape == (1, 192, 6)
    with pytest.raises(ValueError, match="does not fit grid"):
        resample_pos_embed(pe, (2, 2, 2), (4, 4, 4))


def test_monai_style_and_ddp_prefixes():
    net = build_unetr("vit-tiny", 1, 3, 16, 8, 4, **SMALL).model
    state = {"module.vit." + k: v for k, v in net.encoder.state_dict().items()}
    assert set(encoder_state_from(state)) == set(net.encoder.state_dict())
    assert POS_EMBED_KEY in encoder_state_from(state)


def test_wrong_family_and_garbage():
    with pytest.raises(CheckpointError, match="another kind of network"):
        encoder_state_from({"conv1.weight": torch.zeros(1)})


def test_config_rebuilds_the_network():
    net, config = build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, **SMALL)
    again = build_network(config)
    again.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 1, 16, 24, 16)
    assert torch.equal(net.eval()(x), again.eval()(x))
