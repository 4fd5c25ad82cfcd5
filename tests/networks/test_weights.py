import pytest
import torch

from volmae.errors import CheckpointError
from volmae.networks.registry import build_from_config, build_mae, build_unetr
from volmae.networks.weights import (
    POS_EMBED_KEY,
    encoder_state_from,
    read_checkpoint,
    resample_pos_embed,
)

SMALL = dict(hidden_size=24, mlp_dim=48, num_layers=4, num_heads=2)


def mae_checkpoint(tmp_path, roi=(16, 24, 16), **kw):
    mae = build_mae("vit-tiny", 1, roi, 8, decoder_dim=24, decoder_depth=1, decoder_heads=2, **SMALL, **kw)
    path = tmp_path / "mae.pt"
    torch.save(
        {"format": "volmae-checkpoint", "kind": "mae", "config": mae.volmae_config, "model": mae.state_dict()}, path
    )
    return mae, path


def test_mae_encoder_loads_into_unetr(tmp_path):
    mae, path = mae_checkpoint(tmp_path)
    net = build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, pretrained=path, **SMALL)
    rep = net.load_report
    assert rep.ok and not rep.missing and not rep.shape_mismatch
    assert len(rep.loaded) == len(mae.encoder.state_dict())
    assert rep.unexpected == []  # decoder keys are filtered out before matching
    for k, v in mae.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[k], v), k
    assert "tensors loaded" in rep.summary()


def test_learnable_pos_embed_is_resampled_for_a_new_roi(tmp_path):
    mae, path = mae_checkpoint(tmp_path, pos_embed_type="learnable")
    net = build_unetr("vit-tiny", 1, 3, (32, 24, 16), 8, 4, pretrained=path, pos_embed_type="learnable", **SMALL)
    assert net.load_report.resampled == [POS_EMBED_KEY]
    expected = resample_pos_embed(mae.encoder.state_dict()[POS_EMBED_KEY], (2, 3, 2), (4, 3, 2))
    assert torch.allclose(net.encoder.state_dict()[POS_EMBED_KEY], expected)
    assert net.load_report.ok


def test_sincos_pos_embed_is_regenerated(tmp_path):
    _, path = mae_checkpoint(tmp_path)
    net = build_unetr("vit-tiny", 1, 3, (32, 24, 16), 8, 4, pretrained=path, **SMALL)
    fresh = build_unetr("vit-tiny", 1, 3, (32, 24, 16), 8, 4, **SMALL)
    assert net.load_report.regenerated == [POS_EMBED_KEY]
    assert torch.equal(net.encoder.state_dict()[POS_EMBED_KEY], fresh.encoder.state_dict()[POS_EMBED_KEY])


def test_resample_identity_and_shape():
    pe = torch.randn(1, 2 * 3 * 4, 6)
    assert torch.allclose(resample_pos_embed(pe, (2, 3, 4), (2, 3, 4)), pe, atol=1e-6)
    assert resample_pos_embed(pe, (2, 3, 4), (4, 6, 8)).shape == (1, 192, 6)
    with pytest.raises(ValueError, match="does not fit grid"):
        resample_pos_embed(pe, (2, 2, 2), (4, 4, 4))


def test_single_channel_patch_projection_adapts_to_more_channels(tmp_path):
    mae, path = mae_checkpoint(tmp_path)
    net = build_unetr("vit-tiny", 2, 3, (16, 24, 16), 8, 4, pretrained=path, **SMALL)
    assert net.load_report.adapted == ["patch_embedding.patch_embeddings.weight"]
    w = mae.encoder.state_dict()["patch_embedding.patch_embeddings.weight"]
    assert torch.allclose(net.encoder.patch_embedding.patch_embeddings.weight, w.repeat(1, 2, 1, 1, 1) / 2)


def test_mismatched_width_is_reported_not_loaded(tmp_path):
    _, path = mae_checkpoint(tmp_path)
    net = build_unetr(
        "vit-tiny", 1, 3, (16, 24, 16), 8, 4, pretrained=path, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=2
    )
    assert not net.load_report.ok
    assert "NOT LOADED" in net.load_report.summary()


def test_monai_style_and_ddp_prefixes():
    net = build_unetr("vit-tiny", 1, 3, 16, 8, 4, **SMALL)
    state = {"module.vit." + k: v for k, v in net.encoder.state_dict().items()}
    assert set(encoder_state_from(state)) == set(net.encoder.state_dict())


def test_wrong_family_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="another kind of network"):
        encoder_state_from({"conv1.weight": torch.zeros(1)})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_config_rebuilds_the_network():
    net = build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, **SMALL)
    again = build_from_config(net.volmae_config)
    again.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 1, 16, 24, 16)
    assert torch.equal(net.eval()(x), again.eval()(x))


# ----------------------------------------------------------------------------------------------- nnFormer family
def _nnformer_ckpt(tmp_path, roi):
    from volmae.networks.registry import build_mae

    mae = build_mae("nnformer-tiny", 1, roi, embed_dim=12, num_heads=(2, 2, 4))
    path = tmp_path / "mvm.pt"
    torch.save({"format": "volmae-checkpoint", "kind": "masked-volume", "config": mae.volmae_config,
                "model": mae.state_dict()}, path)  # fmt: skip
    return mae, path


def test_masked_volume_weights_load_into_nnformer_with_windows_resampled(tmp_path):
    from volmae.networks.registry import build_segmenter

    mae, path = _nnformer_ckpt(tmp_path, (16, 32, 16))
    same = build_segmenter("nnformer-tiny", 1, 3, (16, 32, 16), pretrained=path, embed_dim=12, num_heads=(2, 2, 4))
    assert same.load_report.ok and not same.load_report.resampled and not same.load_report.unexpected
    for k, v in same.encoder.state_dict().items():
        assert torch.equal(v, mae.encoder.state_dict()[k]), k
    # another ROI: the global stage's window grows with its grid, so its bias tables are resampled
    other = build_segmenter("nnformer-tiny", 1, 3, (32, 32, 32), pretrained=path, embed_dim=12, num_heads=(2, 2, 4))
    rep = other.load_report
    assert rep.ok and rep.resampled and all(k.startswith("stages.2.") for k in rep.resampled)
    assert "stages.0.blocks.0.attn.qkv.weight" in rep.loaded  # the local windows did not change


def test_encoder_families_never_mix(tmp_path):
    from volmae.networks.registry import build_mae, build_segmenter

    _, mvm = _nnformer_ckpt(tmp_path, (16, 16, 16))
    with pytest.raises(CheckpointError, match="holds a nnformer encoder but this network has a vit encoder"):
        build_segmenter("vit-tiny", 1, 3, 16, pretrained=mvm, num_layers=3)
    vit_mae = build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1)
    vit = tmp_path / "mae.pt"
    torch.save({"model": vit_mae.state_dict(), "config": vit_mae.volmae_config, "kind": "mae"}, vit)
    with pytest.raises(CheckpointError, match="holds a vit encoder but this network has a nnformer encoder"):
        build_segmenter("nnformer-tiny", 1, 3, 16, pretrained=vit)


def test_single_channel_nnformer_pretraining_adapts_to_multichannel_input(tmp_path):
    from volmae.networks.registry import build_segmenter

    mae, path = _nnformer_ckpt(tmp_path, (16, 32, 16))
    net = build_segmenter("nnformer-tiny", 2, 4, (16, 32, 16), pretrained=path, embed_dim=12, num_heads=(2, 2, 4))
    assert net.load_report.ok and net.load_report.adapted == ["embed.0.0.weight"]
    w = mae.encoder.state_dict()["embed.0.0.weight"]
    assert torch.allclose(net.encoder.embed[0][0].weight, w.repeat(1, 2, 1, 1, 1) / 2)
