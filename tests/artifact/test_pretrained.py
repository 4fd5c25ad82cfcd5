"""Starting networks from pretrained weights in files (volmae.artifact.pretrained): what --pretrained loads."""

import pytest
import torch

from tests.conftest import model_file
from volmae.artifact import load_pretrained
from volmae.errors import CheckpointError
from volmae.networks.primus import PrimusEncoder
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


# ------------------------------------------ foreign Primus layouts: dynamic-network-architectures' Primus, timm Eva
def _split_qkv(name, value, state):
    """``blocks.N.attn.qkv.weight`` / ``q_bias`` / ``v_bias`` as timm's unfused EvaAttention names them."""
    stem = name.rpartition("attn.")[0] + "attn."
    if name.endswith("attn.qkv.weight"):
        for part, w in zip("qkv", value.chunk(3)):
            state[f"{stem}{part}_proj.weight"] = w.clone()
    elif name.endswith(("attn.q_bias", "attn.v_bias")):
        state[f"{stem}{name[-6]}_proj.bias"] = value.clone()
    else:
        return False
    return True


def _as_dna(encoder, slots=None):
    """A volmae Primus encoder's weights as dynamic-network-architectures' Primus names them (unfused q / k / v,
    ``eva.`` / ``down_projection.`` prefixes, registers outside ``eva`` with position slots in ``eva.pos_embed``),
    plus a DNA patch decoder and the ``mask_token`` buffer."""
    state = {}
    for name, value in encoder.state_dict().items():
        if name.startswith("patch_embed."):
            state["down_projection." + name.removeprefix("patch_embed.")] = value.clone()
        elif name == "pos_embed":
            pos = value if slots is None else torch.cat([slots, value], dim=1)
            state["eva.pos_embed"] = pos.clone()
        elif name == "reg_token":
            state["register_tokens"] = (value if slots is None else value - slots).clone()
        elif not _split_qkv("eva." + name, value, state):
            state["eva." + name] = value.clone()
    state["up_projection.decode.0.0.weight"] = torch.randn(encoder.hidden_size, 8, 2, 2, 2)
    state["up_projection.decode.2.weight"] = torch.randn(8, 3, 2, 2, 2)
    state["mask_token"] = torch.zeros(1, 1, encoder.hidden_size)
    return state


def _as_timm(encoder):
    """A volmae Primus encoder's blocks as a timm EVA-02 ViT names them, with a class token (and its pos_embed
    slot), a 2D patch projection over a 4 x 4 grid and a classifier head."""
    e = encoder.hidden_size
    state = {}
    for name, value in encoder.state_dict().items():
        if not name.startswith(("patch_embed.", "pos_embed")) and not _split_qkv(name, value, state):
            state[name] = value.clone()
    state["cls_token"] = torch.randn(1, 1, e)
    state["pos_embed"] = torch.randn(1, 1 + 16, e)
    state["patch_embed.proj.weight"] = torch.randn(e, 3, 16, 16)
    state["patch_embed.proj.bias"] = torch.randn(e)
    state["head.weight"], state["head.bias"] = torch.randn(5, e), torch.randn(5)
    return state


def _primus(roi=(16, 24, 16), seed=0, **kw):
    torch.manual_seed(seed)
    return build_segmenter("primus-tiny", 1, 3, roi, 8, **{**PRIM, **kw})


def test_dna_primus_weights_load_into_a_primus_and_compute_the_same_features(tmp_path):
    src = _primus(num_register_tokens=2).model.eval()
    state = _as_dna(src.encoder, slots=torch.randn(1, 2, 24))
    path = tmp_path / "checkpoint_final.pth"  # as nnU-Net / nnssl save it: under network_weights, DDP-prefixed
    torch.save({"network_weights": {f"module.{k}": v for k, v in state.items()}, "current_epoch": 1000}, path)
    net, rep = pretrained(_primus(seed=1, num_register_tokens=2), path)
    assert rep.ok and not rep.shape_mismatch and not rep.missing and not rep.decoder_loaded
    for k, v in src.encoder.state_dict().items():
        torch.testing.assert_close(net.encoder.state_dict()[k], v, msg=k)  # the registers: exact up to rounding
    x = torch.randn(1, 1, 16, 24, 16)
    torch.testing.assert_close(net.eval().encoder.forward_features(x), src.encoder.forward_features(x))
    text = rep.summary()
    assert "converted from the dynamic-network-architectures Primus layout" in text
    assert "register slots of eva.pos_embed are folded into reg_token" in text
    assert "patch decoder (up_projection" in text and "mask_token is pretraining-only" in text
    assert {"up_projection.decode.0.0.weight", "up_projection.decode.2.weight", "mask_token"} <= set(rep.unexpected)
    assert "head count" in text  # what the weights cannot say


def test_dna_primus_key_bias_missing_options_and_compiled_prefixes_are_reported(tmp_path):
    src = _primus(roi=(16, 16, 16)).model  # pretrained on a cube, as nnssl does: the grid is guessed as one
    state = _as_dna(src.encoder)
    state["eva.blocks.0.attn.k_proj.bias"] = torch.ones(24)  # a key bias: volmae's attention has none
    state = {k: v for k, v in state.items() if ".attn.norm." not in k}  # scale_attn_inner=False (DNA's default)
    torch.save({"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "dna.pt")
    net, rep = pretrained(_primus(seed=1), tmp_path / "dna.pt")  # another ROI: resampled
    assert rep.resampled == ["pos_embed"] and "blocks.0.attn.qkv.weight" in rep.loaded
    torch.testing.assert_close(net.encoder.pos_embed, resample_pos_embed(src.encoder.pos_embed, (2, 2, 2), (2, 3, 2)))
    assert "eva.blocks.0.attn.k_proj.bias" in rep.unexpected and "attn.k_proj.bias cannot load" in rep.summary()
    assert "no attention inner norm" in rep.summary() and "blocks.0.attn.norm.weight" in rep.missing


def test_timm_eva_blocks_load_and_its_2d_parts_are_reported(tmp_path):
    src = _primus().model
    torch.save({"model": _as_timm(src.encoder)}, tmp_path / "eva02.pth")
    net, rep = pretrained(_primus(seed=1), tmp_path / "eva02.pth")
    for k, v in src.encoder.state_dict().items():
        if k.startswith(("blocks.", "norm.")):
            assert torch.equal(net.encoder.state_dict()[k], v), k
    assert set(rep.missing) == {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"}
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight"} <= set(rep.unexpected)
    text = rep.summary()
    assert "converted from the timm Eva layout" in text and "cls_token dropped" in text
    assert "patch projection is 2D (24, 3, 16, 16)" in text and "2D grid (4 x 4)" in text
    assert "class-token slot is dropped" in text and "RoPE is 2D" in text


def test_a_foreign_primus_of_another_width_names_the_preset_that_fits(tmp_path):
    torch.manual_seed(0)
    wide = PrimusEncoder(1, (16, 24, 16), 8, hidden_size=396, num_layers=1, num_heads=6)  # Primus-S's width
    torch.save({"network_weights": _as_dna(wide)}, tmp_path / "primus_s.pth")
    msg = r"primus_s.pth: holds dynamic-network-architectures Primus weights \(396 wide, 1 blocks\), but this network's"
    with pytest.raises(CheckpointError, match=msg + r".*is 24 wide.*--preset primus-s \(396 wide, 12 blocks, 6 heads"):
        pretrained(_primus(), tmp_path / "primus_s.pth")
    odd = PrimusEncoder(1, (16, 24, 16), 8, hidden_size=48, num_layers=1, num_heads=2)
    torch.save(_as_timm(odd), tmp_path / "eva.pth")
    with pytest.raises(CheckpointError, match=r"timm Eva weights \(48 wide.*a Primus 48 wide \(no volmae preset is\)"):
        pretrained(_primus(), tmp_path / "eva.pth")
    with pytest.raises(CheckpointError, match="holds dynamic-network-.* Primus .* but this is a vit network"):
        pretrained(build_unetr("vit-tiny", 1, 3, (16, 24, 16), 8, 4, **SMALL), tmp_path / "primus_s.pth")
