import pytest
import torch

from volmae.errors import CheckpointError
from volmae.networks.primus import PrimusEncoder, apply_rope, rope_table
from volmae.networks.registry import build_network, build_unetr
from volmae.networks.weights import (
    POS_EMBED_KEY,
    convert_foreign_primus,
    dna_primus_to_volmae,
    encoder_state_from,
    resample_pos_embed,
    timm_eva_to_volmae,
)

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


# ---------------------------------------------------------------------------------- foreign Primus-family layouts
def test_rope_is_the_layout_dna_builds_with_timm():
    """dynamic-network-architectures' Eva builds timm's ``RotaryEmbeddingCat(dim=2/3 hd, in_pixels=False,
    feat_shape=ref_feat_shape=grid)`` and applies it with ``apply_rot_embed_cat`` (interleaved pairs). timm's steps,
    re-derived here: ``dim // 4`` bands ``1 / T ** (arange(n) / n)``, positions ``arange(s) / s * s`` on an 'ij'
    meshgrid, ``grid[..., None] * bands`` flattened (axis-major) and each angle repeated for its channel pair; sines
    then cosines; ``x * cos + rot(x) * sin`` with ``rot(x) = (-x1, x0, -x3, x2, ...)``."""
    grid, hd, temperature = (3, 4, 2), 18, 10000.0
    dim = round(hd / 1.5)
    bands = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    t = [torch.arange(s, dtype=torch.float32) / s * s for s in grid]
    pos = torch.stack(torch.meshgrid(*t, indexing="ij"), dim=-1)[..., None] * bands
    sin = pos.sin().reshape(-1, 3 * (dim // 4)).repeat_interleave(2, -1)
    cos = pos.cos().reshape(-1, 3 * (dim // 4)).repeat_interleave(2, -1)
    timm_table = torch.cat([sin, cos], dim=-1)
    torch.testing.assert_close(rope_table(grid, hd, temperature), timm_table)
    x = torch.randn(2, 3, timm_table.shape[0], hd)  # B heads N hd
    rot = torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)
    torch.testing.assert_close(apply_rope(x, rope_table(grid, hd)), x * cos + rot * sin)


def _encoder_state():
    torch.manual_seed(0)
    enc = PrimusEncoder(1, 16, 8, hidden_size=24, num_layers=2, num_heads=2)
    return enc.state_dict()


def test_foreign_layouts_are_told_apart():
    state = _encoder_state()
    assert convert_foreign_primus(state) is None  # volmae's own bare encoder: timm's fused names, a 3D tokenizer
    assert convert_foreign_primus({"encoder." + k: v for k, v in state.items()}) is None
    monai_vit = build_unetr("vit-tiny", 1, 3, 16, 8, 4, **SMALL).model.encoder.state_dict()
    assert convert_foreign_primus({**monai_vit, "cls_token": torch.zeros(1, 1, 24)}) is None  # MONAI blocks, not EVA
    dna = {"eva." + k: v for k, v in state.items() if k != "patch_embed.proj.weight"}
    assert convert_foreign_primus({"network_weights": dna}).layout == "dynamic-network-architectures Primus"
    assert convert_foreign_primus({**state, "cls_token": torch.zeros(1, 1, 24)}).layout == "timm Eva"


def test_fused_and_split_attention_become_volmae_qkv():
    state = _encoder_state()
    qkv, q_bias, v_bias = (state[f"blocks.0.attn.{k}"] for k in ("qkv.weight", "q_bias", "v_bias"))
    split = {f"eva.blocks.0.attn.{n}_proj.weight": w for n, w in zip("qkv", qkv.chunk(3))}
    split |= {"eva.blocks.0.attn.q_proj.bias": q_bias, "eva.blocks.0.attn.v_proj.bias": v_bias}
    out = dna_primus_to_volmae({"module." + k: v for k, v in split.items()})
    out = {k.removeprefix("encoder.blocks.0.attn."): v for k, v in out.items()}
    assert set(out) == {"qkv.weight", "q_bias", "v_bias"}
    assert torch.equal(out["qkv.weight"], qkv) and torch.equal(out["v_bias"], v_bias)
    fused = {"blocks.0.attn.qkv.weight": qkv, "blocks.0.attn.qkv.bias": torch.cat([q_bias, torch.ones(24), v_bias])}
    fused |= {"blocks.0.mlp.fc1_g.weight": state["blocks.0.mlp.fc1_g.weight"], "cls_token": torch.zeros(1, 1, 24)}
    assert torch.equal(timm_eva_to_volmae(fused)["encoder.blocks.0.attn.q_bias"], q_bias)
    assert any("key bias" in n for n in convert_foreign_primus(fused).notes)  # a non-zero k bias cannot load
