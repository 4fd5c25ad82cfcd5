import pytest
import torch

from volmae.errors import ConfigError
from volmae.networks import UNETR, MaskedAutoencoder, MaskedVolumeModel, NnFormer, PrimusMAE, PrimusSegmenter
from volmae.networks.masked_unetr import MaskedUNETR
from volmae.networks.registry import (
    PRESETS,
    NetworkConfig,
    PrimusPreset,
    build_encoder,
    build_mae,
    build_network,
    build_segmenter,
    build_unetr,
    citations,
    list_presets,
    segmenter_config,
)


def test_paper_base_preset():
    p = PRESETS["vit-base"]
    assert (p.hidden_size, p.num_layers, p.num_heads, p.patch_size) == (768, 12, 12, 16)
    assert (p.decoder_dim, p.decoder_depth) == (384, 8)  # SelfMedMAE's decoder


@pytest.mark.parametrize("name", sorted(k for k, v in PRESETS.items() if v.family == "vit"))
def test_every_vit_preset_builds(name):
    enc, cfg = build_encoder(name, 1, 32, patch_size=16, num_layers=1)
    assert cfg.kind == "vit-encoder" and cfg.role == "encoder" and cfg.window == (32, 32, 32)
    assert enc.hidden_size == PRESETS[name].hidden_size
    assert name in list_presets()


@pytest.mark.parametrize(
    "name, roi", [("nnformer-tiny", (48, 64, 48)), ("nnformer-synapse", (64, 128, 128)), ("nnformer-tumor", 128)]
)
def test_every_nnformer_preset_builds_at_its_paper_roi(name, roi):
    enc = build_encoder(name, 1, roi, depths=(1,) * len(PRESETS[name].depths)).model
    assert enc.dims[0] == PRESETS[name].embed_dim
    assert enc.windows[-1] == enc.grids[-1]  # global attention at the coarsest stage
    assert name in list_presets()


def test_nnformer_paper_presets():
    syn, tum = PRESETS["nnformer-synapse"], PRESETS["nnformer-tumor"]
    assert (syn.embed_dim, syn.patch_size, syn.num_heads) == (192, (2, 4, 4), (6, 12, 24, 48))
    assert syn.window_sizes == (4, 4, 8, 4)
    assert (tum.embed_dim, tum.patch_size, tum.num_heads) == (96, (4, 4, 4), (3, 6, 12, 24))


@pytest.mark.parametrize(
    "preset, net_cls, pre_cls",
    [
        ("vit-tiny", UNETR, MaskedAutoencoder),
        ("nnformer-tiny", NnFormer, MaskedVolumeModel),
        ("primus-tiny", PrimusSegmenter, PrimusMAE),
        ("primus-tiny-conv-unetr", UNETR, MaskedUNETR),
    ],
)
def test_segmenter_and_pretraining_model_follow_the_preset_and_rebuild_from_config(preset, net_cls, pre_cls):
    seg = build_segmenter(preset, 1, 3, 16)
    pre = build_mae(preset, 1, 16)
    assert isinstance(seg.model, net_cls) and isinstance(pre.model, pre_cls)
    assert (seg.config.role, pre.config.role) == ("segmentation", "pretraining")
    for model, config in (seg, pre):
        stored = config.to_dict()
        again = build_network(stored)  # from the stored form, as a model file holds it
        assert NetworkConfig.from_dict(stored) == config
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
    with pytest.raises(ConfigError, match="builds a Primus"):
        build_segmenter("primus-tiny", 1, 3, 16, feature_size=8)
    with pytest.raises(ConfigError, match="mixes at the encoder's width"):
        build_mae("primus-tiny", 1, 16, decoder_dim=96)
    with pytest.raises(ConfigError, match="does not apply to the primus preset"):
        build_mae("primus-tiny", 1, 16, method="s3d")


@pytest.mark.parametrize("preset", ["vit-tiny", "nnformer-tiny", "resenc-tiny", "dynunet"])
def test_the_tokenizer_is_a_primus_option(preset):
    with pytest.raises(ConfigError, match=r"has no tokenizer choice; it is a Primus option"):
        build_segmenter(preset, 1, 3, 32, tokenizer="conv")
    if preset != "dynunet":
        with pytest.raises(ConfigError, match="has no tokenizer choice"):
            build_mae(preset, 1, 32, tokenizer="conv")


def test_primus_tokenizers_build_and_a_wrong_one_is_named():
    seg = build_segmenter("primus-tiny", 1, 3, 16, tokenizer="conv", num_layers=1)
    mae = build_mae("primus-tiny", 1, 16, tokenizer="conv", num_layers=1)
    assert seg.config.encoder["tokenizer"] == mae.config.encoder["tokenizer"] == "conv"
    assert seg.model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ConfigError, match="preset .primus-tiny.: tokenizer='convs': expected one of patch, conv"):
        build_segmenter("primus-tiny", 1, 3, 16, tokenizer="convs")


def test_the_conv_tokenizer_preset_differs_from_primus_tiny_by_its_tokenizer_only():
    conv, patch = build_mae("primus-tiny-conv", 1, 16, num_layers=1), build_mae("primus-tiny", 1, 16, num_layers=1)
    assert conv.config.encoder == {**patch.config.encoder, "tokenizer": "conv"}
    assert conv.model.encoder.tokenizer == "conv" and patch.model.encoder.tokenizer == "patch"
    back = build_segmenter("primus-tiny-conv", 1, 3, 16, tokenizer="patch", num_layers=1)  # the flag still rules
    assert back.model.encoder.tokenizer == "patch"


def test_tiny_preset_runs_mae_and_unetr():
    x = torch.randn(1, 1, 16, 16, 16)
    mae = build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1).model
    assert mae(x)[1].shape == (1, 8, 512)
    assert build_unetr("vit-tiny", 1, 3, 16, num_layers=3).model(x).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ConfigError, match="too few for 3 decoder levels"):
        build_unetr("vit-tiny", 1, 3, 16, num_layers=2)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset 'vit-huge'"):
        build_encoder("vit-huge")
    with pytest.raises(ConfigError, match="with the UNETR decoder: primus-tiny-conv-unetr"):
        build_segmenter("primus-tiny", 1, 3, 16, feature_size=8)
    with pytest.raises(ConfigError, match="nnFormer option; preset 'primus-tiny-conv-unetr' builds a UNETR"):
        build_segmenter("primus-tiny-conv-unetr", 1, 3, 16, deep_supervision=True)


def test_the_primus_unetr_preset_is_primus_tiny_conv_with_the_unetr_decoder():
    a, b = PRESETS["primus-tiny-conv"], PRESETS["primus-tiny-conv-unetr"]
    assert a.encoder_kwargs() == b.encoder_kwargs() and (a.decoder, b.decoder) == ("patch", "unetr")
    seg = build_segmenter("primus-tiny-conv-unetr", 1, 3, (16, 16, 24), feature_size=8)
    assert seg.config.kind == "primus-unetr" and seg.config.family == "primus"
    assert seg.config.arguments["feature_size"] == 8 and seg.model.stem is not None
    assert build_mae("primus-tiny-conv-unetr", 1, 16).config.kind == "primus-masked-unetr"  # auto: the whole UNETR
    assert build_mae("primus-tiny-conv-unetr", 1, 16, method="mae").config.kind == "primus-mae"
    with pytest.raises(ConfigError, match="decoder='conv'"):
        PrimusPreset(192, 12, 4, 8, 2, 0.1, "x", decoder="conv")


@pytest.mark.parametrize("preset", ["vit-tiny", "nnformer-tiny", "primus-tiny", "primus-tiny-conv-unetr", "dynunet"])
def test_segmenter_config_is_the_config_of_the_built_segmenter(preset):
    roi = (48, 64, 48) if preset == "nnformer-tiny" else (16, 16, 16)
    built = build_segmenter(preset, 2, 4, roi)
    assert segmenter_config(preset, 2, 4, roi) == built.config
    assert (built.config.in_channels, built.config.out_channels, built.config.window) == (2, 4, roi)
    assert built.config.family == PRESETS[preset].family


def test_network_config_refuses_what_builds_no_network():
    with pytest.raises(ConfigError, match="describes no volmae network"):
        NetworkConfig.from_dict({"kind": "resnet"})
    with pytest.raises(ConfigError, match="needs its encoder's arguments"):
        NetworkConfig("unetr", "vit-tiny", {"out_channels": 2})
    config = build_segmenter("vit-tiny", 1, 2, 16).config
    with pytest.raises(ConfigError, match="preset 'vit-tiny'"):
        build_network(config.with_window((20, 16, 16)))  # not a multiple of the patch


def test_with_window_moves_the_window_only():
    config = build_segmenter("vit-tiny", 1, 2, 16).config
    wider = config.with_window((16, 24, 32))
    assert wider.window == (16, 24, 32) and wider.encoder["img_size"] == [16, 24, 32]
    assert wider.arguments == config.arguments and wider.preset == config.preset


def test_citations_name_the_network_and_its_pretraining():
    unetr, mae = build_segmenter("vit-tiny", 1, 2, 16).config, build_mae("vit-tiny", 1, 16).config
    assert "UNETR" in citations(unetr)[0] and len(citations(unetr)) == 1
    assert any("Masked Autoencoders" in c for c in citations(mae))
    assert len(citations(unetr, pretrained="mae.pt")) == 2
    primus, primus_mae = build_segmenter("primus-tiny", 1, 2, 16).config, build_mae("primus-tiny", 1, 16).config
    assert "Primus" in citations(primus)[0] and "OpenMind" in citations(primus_mae)[1]
