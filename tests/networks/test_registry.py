import pytest
import torch

from volmae.errors import ConfigError
from volmae.networks.registry import PRESETS, build_encoder, build_mae, build_unetr, list_presets


def test_paper_base_preset():
    p = PRESETS["vit-base"]
    assert (p.hidden_size, p.num_layers, p.num_heads, p.patch_size) == (768, 12, 12, 16)
    assert (p.decoder_dim, p.decoder_depth) == (384, 8)  # SelfMedMAE's decoder


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    enc = build_encoder(name, 1, 32, patch_size=16, num_layers=1)
    assert enc.hidden_size == PRESETS[name].hidden_size
    assert name in list_presets()


def test_tiny_preset_runs_mae_and_unetr():
    x = torch.randn(1, 1, 16, 16, 16)
    mae = build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1)
    assert mae(x)[1].shape == (1, 8, 512)
    assert build_unetr("vit-tiny", 1, 3, 16, num_layers=3)(x).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="too few for 3 decoder levels"):
        build_unetr("vit-tiny", 1, 3, 16, num_layers=2)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset 'vit-huge'"):
        build_encoder("vit-huge")
