import pytest
import torch

from volmae.errors import ConfigError
from volmae.networks import UNETR, MaskedAutoencoder, MaskedVolumeModel, NnFormer
from volmae.networks.registry import (
    PRESETS,
    build_encoder,
    build_from_config,
    build_mae,
    build_segmenter,
    build_unetr,
    list_presets,
)


def test_paper_base_preset():
    p = PRESETS["vit-base"]
    assert (p.hidden_size, p.num_layers, p.num_heads, p.patch_size) == (768, 12, 12, 16)
    assert (p.decoder_dim, p.decoder_depth) == (384, 8)  # SelfMedMAE's decoder


@pytest.mark.parametrize("name", sorted(k for k, v in PRESETS.items() if v.family == "vit"))
def test_every_vit_preset_builds(name):
    enc = build_encoder(name, 1, 32, patch_size=16, num_layers=1)
    assert enc.hidden_size == PRESETS[name].hidden_size
    assert name in list_presets()


@pytest.mark.parametrize(
    "name, roi", [("nnformer-tiny", (48, 64, 48)), ("nnformer-synapse", (64, 128, 128)), ("nnformer-tumor", 128)]
)
def test_every_nnformer_preset_builds_at_its_paper_roi(name, roi):
    enc = build_encoder(name, 1, roi, depths=(1,) * len(PRESETS[name].depths))
    assert enc.dims[0] == PRESETS[name].embed_dim
    assert enc.windows[-1] == enc.grids[-1]  # global attention at the coarsest stage
    assert name in list_presets()


def test_nnformer_paper_presets():
    syn, tum = PRESETS["nnformer-synapse"], PRESETS["nnformer-tumor"]
    assert (syn.embed_dim, syn.patch_size, syn.num_heads) == (192, (2, 4, 4), (6, 12, 24, 48))
    assert syn.window_sizes == (4, 4, 8, 4)
    assert (tum.embed_dim, tum.patch_size, tum.num_heads) == (96, (4, 4, 4), (3, 6, 12, 24))


@pytest.mark.parametrize(
    "preset, net_cls, pre_cls", [("vit-tiny", UNETR, MaskedAutoencoder), ("nnformer-tiny", NnFormer, MaskedVolumeModel)]
)
def test_segmenter_and_pretraining_model_follow_the_preset_and_rebuild_from_config(preset, net_cls, pre_cls):
    seg = build_segmenter(preset, 1, 3, 16)
    pre = build_mae(preset, 1, 16)
    assert isinstance(seg, net_cls) and isinstance(pre, pre_cls)
    for model in (seg, pre):
        again = build_from_config(model.volmae_config)
        assert type(again) is type(model)
        again.load_state_dict(model.state_dict())  # same architecture, key for key


def test_options_of_the_other_family_are_refused():
    with pytest.raises(ConfigError, match="UNETR options"):
        build_segmenter("nnformer-tiny", 1, 3, 16, feature_size=8)
    with pytest.raises(ConfigError, match="nnFormer option"):
        build_segmenter("vit-tiny", 1, 3, 16, deep_supervision=True)
    with pytest.raises(ConfigError, match="is an nnformer preset; this needs a vit one"):
        build_unetr("nnformer-tiny", 1, 3, 16)
    with pytest.raises(ConfigError, match="decoder_dim only"):
        build_mae("nnformer-tiny", 1, 16, decoder_depth=2)


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
