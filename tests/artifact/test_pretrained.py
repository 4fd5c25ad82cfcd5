"""Starting networks from pretrained weights in files (volmae.artifact.pretrained): what --pretrained loads."""

import pytest
import torch

from tests.conftest import model_file
from volmae.artifact import load_pretrained
from volmae.errors import CheckpointError
from volmae.networks.registry import build_mae, build_segmenter, build_unetr
from volmae.networks.weights import POS_EMBED_KEY, resample_pos_embed

SMALL = dict(hidden_size=24, mlp_dim=48, num_layers=4, num_heads=2)


def pretrained(built, path):
    """The built network with the weights of ``path`` loaded as --pretrained does; ``(model, report)``."""
    model, config = built
    return model, load_pretrained(model, config, path)


def mae_file(tmp_path, roi=(16, 24, 16), **kw):
    built = build_mae("vit-tiny", 1, roi, 8, decoder_dim=24, decoder_depth=1, decoder_heads=2, **SMALL, **kw)
    return built.model, model_file(built, tmp_path / "mae.pt")


def test_mae_encoder_loads_into_unetr(tmp_path):
    mae, path = mae_file(tmp_path)
    net, rep = pretrained(build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, **SMALL), path)
    assert rep.ok and not rep.missing and not rep.shape_mismatch
    assert len(rep.loaded) == len(mae.encoder.state_dict())
    assert rep.unexpected == []  # decoder keys are filtered out before matching
    for k, v in mae.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[k], v), k
    assert "tensors loaded" in rep.summary()


def test_a_plain_state_dict_loads_too(tmp_path):
    mae, _ = mae_file(tmp_path)
    torch.save(mae.state_dict(), tmp_path / "plain.pt")  # no config: the grid is guessed from the token count
    net, rep = pretrained(build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, **SMALL), tmp_path / "plain.pt")
    assert rep.ok and torch.equal(net.encoder.blocks[0].mlp.linear1.weight, mae.encoder.blocks[0].mlp.linear1.weight)


def test_learnable_pos_embed_is_resampled_for_a_new_roi(tmp_path):
    mae, path = mae_file(tmp_path, pos_embed_type="learnable")
    built = build_unetr("vit-tiny", 1, 3, (32, 24, 16), 8, 4, pos_embed_type="learnable", **SMALL)
    net, rep = pretrained(built, path)
    assert rep.resampled == [POS_EMBED_KEY]
    expected = resample_pos_embed(mae.encoder.state_dict()[POS_EMBED_KEY], (2, 3, 2), (4, 3, 2))
    assert torch.allclose(net.encoder.state_dict()[POS_EMBED_KEY], expected)
    assert rep.ok


def test_sincos_pos_embed_is_regenerated(tmp_path):
    _, path = mae_file(tmp_path)
    net, rep = pretrained(build_unetr("vit-tiny", 1, 3, (32, 24, 16), 8, 4, **SMALL), path)
    fresh = build_unetr("vit-tiny", 1, 3, (32, 24, 16), 8, 4, **SMALL).model
    assert rep.regenerated == [POS_EMBED_KEY]
    assert torch.equal(net.encoder.state_dict()[POS_EMBED_KEY], fresh.encoder.state_dict()[POS_EMBED_KEY])


def test_single_channel_patch_projection_adapts_to_more_channels(tmp_path):
    mae, path = mae_file(tmp_path)
    net, rep = pretrained(build_unetr("vit-tiny", 2, 3, (16, 24, 16), 8, 4, **SMALL), path)
    assert rep.adapted == ["patch_embedding.patch_embeddings.weight"]
    w = mae.encoder.state_dict()["patch_embedding.patch_embeddings.weight"]
    assert torch.allclose(net.encoder.patch_embedding.patch_embeddings.weight, w.repeat(1, 2, 1, 1, 1) / 2)


def test_mismatched_width_is_reported_not_loaded(tmp_path):
    _, path = mae_file(tmp_path)
    built = build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=2)
    _, rep = pretrained(built, path)
    assert not rep.ok
    assert "NOT LOADED" in rep.summary()


def test_garbage_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt: not a readable PyTorch file"):
        pretrained(build_unetr("vit-tiny", 1, 3, 16, 8, 4, **SMALL), bad)
    with pytest.raises(CheckpointError, match="missing.pt: model file not found"):
        pretrained(build_unetr("vit-tiny", 1, 3, 16, 8, 4, **SMALL), tmp_path / "missing.pt")


def test_the_cnn_peer_takes_no_vit_weights(tmp_path):
    _, path = mae_file(tmp_path)
    with pytest.raises(CheckpointError, match="holds a vit network .mae. but this is a cnn network .dynunet."):
        pretrained(build_segmenter("dynunet", 1, 3, (16, 16, 16)), path)


# ----------------------------------------------------------------------------------------------- nnFormer family
def _nnformer_file(tmp_path, roi):
    built = build_mae("nnformer-tiny", 1, roi, embed_dim=12, num_heads=(2, 2, 4))
    return built.model, model_file(built, tmp_path / "mvm.pt")


def test_masked_volume_weights_load_into_nnformer_with_windows_resampled(tmp_path):
    mae, path = _nnformer_file(tmp_path, (16, 32, 16))
    same, rep = pretrained(
        build_segmenter("nnformer-tiny", 1, 3, (16, 32, 16), embed_dim=12, num_heads=(2, 2, 4)), path
    )
    assert rep.ok and not rep.resampled and not rep.unexpected
    for k, v in same.encoder.state_dict().items():
        assert torch.equal(v, mae.encoder.state_dict()[k]), k
    # another ROI: the global stage's window grows with its grid, so its bias tables are resampled
    _, rep = pretrained(build_segmenter("nnformer-tiny", 1, 3, (32, 32, 32), embed_dim=12, num_heads=(2, 2, 4)), path)
    assert rep.ok and rep.resampled and all(k.startswith("stages.2.") for k in rep.resampled)
    assert "stages.0.blocks.0.attn.qkv.weight" in rep.loaded  # the local windows did not change


def test_encoder_families_never_mix(tmp_path):
    _, mvm = _nnformer_file(tmp_path, (16, 16, 16))
    with pytest.raises(CheckpointError, match="holds a nnformer network .* but this is a vit network"):
        pretrained(build_segmenter("vit-tiny", 1, 3, 16, num_layers=3), mvm)
    vit = model_file(build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1), tmp_path / "mae.pt")
    with pytest.raises(CheckpointError, match="holds a vit network .* but this is a nnformer network"):
        pretrained(build_segmenter("nnformer-tiny", 1, 3, 16), vit)
    plain = tmp_path / "plain.pt"  # without a config, the keys tell the family
    torch.save(torch.load(vit, weights_only=True)["weights"], plain)
    with pytest.raises(CheckpointError, match="holds a vit encoder but this network has a nnformer encoder"):
        pretrained(build_segmenter("nnformer-tiny", 1, 3, 16), plain)


def test_single_channel_nnformer_pretraining_adapts_to_multichannel_input(tmp_path):
    mae, path = _nnformer_file(tmp_path, (16, 32, 16))
    net, rep = pretrained(build_segmenter("nnformer-tiny", 2, 4, (16, 32, 16), embed_dim=12, num_heads=(2, 2, 4)), path)
    assert rep.ok and rep.adapted == ["embed.0.0.weight"]
    w = mae.encoder.state_dict()["embed.0.0.weight"]
    assert torch.allclose(net.encoder.embed[0][0].weight, w.repeat(1, 2, 1, 1, 1) / 2)


# ------------------------------------------------------------------------------- whole-network transfer (ResEnc)
RES = dict(filters=[4, 8, 16])


def _s3d_file(tmp_path, roi=(16, 24, 16), channels=1):
    built = build_mae("resenc-tiny", channels, roi, **RES)
    return built.model, model_file(built, tmp_path / "s3d.pt")


def test_s3d_weights_load_whole_into_a_resenc_unet_with_a_fresh_head(tmp_path):
    pre, path = _s3d_file(tmp_path)
    torch.manual_seed(1)
    net, rep = pretrained(build_segmenter("resenc-tiny", 1, 3, (16, 24, 16), **RES), path)
    assert rep.ok and rep.decoder_loaded and rep.head == ["head.conv.conv.weight", "head.conv.conv.bias"]
    for k, v in net.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, pre.state_dict()[k]), k  # encoder and decoder: every tensor
    torch.manual_seed(1)
    fresh = build_segmenter("resenc-tiny", 1, 3, (16, 24, 16), **RES).model
    assert torch.equal(net.head.conv.conv.weight, fresh.head.conv.conv.weight)  # the head kept its fresh init
    assert "whole-network transfer" in rep.summary() and "starts fresh" in rep.summary()
    # the pretraining-only parts are not the network's: neither loaded nor reported missing
    assert not any(k.startswith(("mask_tokens", "densify")) for k in rep.loaded + rep.decoder_loaded + rep.missing)


def test_transfer_encoder_leaves_the_decoder_fresh(tmp_path):
    pre, path = _s3d_file(tmp_path)
    model, config = build_segmenter("resenc-tiny", 1, 3, (16, 24, 16), **RES)
    rep = load_pretrained(model, config, path, transfer="encoder")
    assert rep.ok and rep.loaded and rep.decoder_loaded == []
    assert not torch.equal(model.ups[0].transp_conv.conv.weight, pre.ups[0].transp_conv.conv.weight)


def test_the_stem_adapts_to_more_input_channels(tmp_path):
    pre, path = _s3d_file(tmp_path)
    net, rep = pretrained(build_segmenter("resenc-tiny", 2, 3, (16, 24, 16), **RES), path)
    assert rep.adapted == ["stem.0.conv.weight"] and rep.ok
    w = pre.encoder.stem[0].conv.weight
    torch.testing.assert_close(net.encoder.stem[0].conv.weight, w.repeat(1, 2, 1, 1, 1) / 2)
    x = torch.randn(1, 1, 16, 24, 16)  # an image repeated over both channels: the pretrained stem's response
    torch.testing.assert_close(net.encoder.stem[0](x.repeat(1, 2, 1, 1, 1)), pre.encoder.stem[0](x))


def test_whole_transfer_between_segmentation_models_of_other_classes(tmp_path):
    """A trained model of another task starts a new one: all but the head (every family, the DynUNet peer too)."""
    for preset, kw in (("resenc-tiny", RES), ("dynunet", {})):
        src = build_segmenter(preset, 1, 5, (16, 16, 16), **kw)
        path = model_file(src, tmp_path / f"{preset}.pt")
        net, rep = pretrained(build_segmenter(preset, 1, 2, (16, 16, 16), **kw), path)
        assert rep.ok and rep.decoder_loaded and rep.head, preset
        assert not rep.shape_mismatch  # the head's other class count is not a mismatch: it is not transferred


def test_whole_transfer_needs_a_decoder_in_the_file(tmp_path):
    _, path = mae_file(tmp_path)
    model, config = build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, **SMALL)
    with pytest.raises(CheckpointError, match="carries no unetr decoder; whole-network transfer takes a masked-unetr"):
        load_pretrained(model, config, path, transfer="whole")
    with pytest.raises(Exception, match="transfer='sideways'"):
        load_pretrained(model, config, path, transfer="sideways")


def test_s3d_weights_never_load_into_a_transformer(tmp_path):
    _, path = _s3d_file(tmp_path)
    with pytest.raises(CheckpointError, match="holds a resenc network .s3d. but this is a vit network"):
        pretrained(build_segmenter("vit-tiny", 1, 3, 16, num_layers=3), path)


def test_another_spacing_or_window_is_noted_in_the_report(tmp_path):
    """Weights learned at another voxel spacing or window still load, and the report says what differs."""
    _, path = _s3d_file(tmp_path)  # saved with the hippocampus preprocessing (1 mm) at 16 x 24 x 16
    model, config = build_segmenter("resenc-tiny", 1, 3, (16, 24, 16), **RES)
    same = load_pretrained(model, config, path, spacing=(1.0, 1.0, 1.0))
    assert same.notes == [] and "NOTE" not in same.summary()
    model, config = build_segmenter("resenc-tiny", 1, 3, (16, 16, 16), **RES)
    rep = load_pretrained(model, config, path, spacing=(3.0, 3.0, 3.0))
    assert rep.ok and len(rep.notes) == 2
    assert "pretrained at 1 x 1 x 1 mm, fine-tuned at 3 x 3 x 3 mm" in rep.summary()
    assert "pretrained on [16, 24, 16] windows, fine-tuned on [16, 16, 16]" in rep.summary()


# ------------------------------------------------------------------------------ whole-network transfer (Primus)
PRIM = dict(hidden_size=24, num_layers=2, num_heads=2)


def _primus_mae_file(tmp_path, roi=(16, 24, 16), channels=1):
    built = build_mae("primus-tiny", channels, roi, 8, decoder_depth=1, **PRIM)
    return built.model, model_file(built, tmp_path / "primus_mae.pt")


def test_primus_mae_weights_load_whole_into_a_primus_with_a_fresh_head(tmp_path):
    pre, path = _primus_mae_file(tmp_path)
    net, rep = pretrained(build_segmenter("primus-tiny", 1, 3, (16, 24, 16), 8, **PRIM), path)
    assert rep.ok and rep.decoder_loaded and rep.head == ["head.weight", "head.bias"]
    for k, v in net.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, pre.state_dict()[k]), k  # encoder and patch decoder: every tensor
    assert not any(k.startswith(("mask_token", "mixer")) for k in rep.loaded + rep.decoder_loaded + rep.missing)


def test_primus_pos_embed_is_resampled_and_rope_rebuilt_for_another_roi(tmp_path):
    pre, path = _primus_mae_file(tmp_path)
    net, rep = pretrained(build_segmenter("primus-tiny", 1, 3, (24, 24, 16), 8, **PRIM), path)
    assert rep.resampled == ["pos_embed"] and rep.ok
    torch.testing.assert_close(net.encoder.pos_embed, resample_pos_embed(pre.encoder.pos_embed, (2, 3, 2), (3, 3, 2)))
    assert net.encoder.rope.shape[0] == 3 * 3 * 2  # the RoPE table is the new grid's (never stored)


def test_primus_tokenizer_adapts_to_more_channels_and_families_never_mix(tmp_path):
    pre, path = _primus_mae_file(tmp_path)
    net, rep = pretrained(build_segmenter("primus-tiny", 2, 3, (16, 24, 16), 8, **PRIM), path)
    assert rep.adapted == ["patch_embed.proj.weight"] and rep.ok
    w = pre.encoder.patch_embed.proj.weight
    torch.testing.assert_close(net.encoder.patch_embed.proj.weight, w.repeat(1, 2, 1, 1, 1) / 2)
    with pytest.raises(CheckpointError, match="holds a primus network .* but this is a vit network"):
        pretrained(build_segmenter("vit-tiny", 1, 3, (16, 24, 16), num_layers=3), path)
    plain = tmp_path / "plain.pt"  # without a config, the keys tell the family: a ViT's are not a Primus'
    vit = model_file(build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1), tmp_path / "mae.pt")
    torch.save(torch.load(vit, weights_only=True)["weights"], plain)
    with pytest.raises(CheckpointError, match="holds a vit encoder but this network has a primus encoder"):
        pretrained(build_segmenter("primus-tiny", 1, 3, 16, 8, **PRIM), plain)
