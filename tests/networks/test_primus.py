"""The Primus encoder and segmenter (volmae.networks.primus): shapes, RoPE, token subsets, registers, LayerScale,
drop path, layer ids, TorchScript, gradients and ill arguments. Tiny sizes: the whole file runs in seconds."""

import math

import pytest
import torch

from volmae.networks.primus import PrimusEncoder, PrimusSegmenter, apply_rope, rope_table
from volmae.utils.optim import param_groups

TINY = dict(hidden_size=24, num_layers=2, num_heads=2)  # head width 12: two RoPE frequencies per axis


def encoder(channels=1, size=(16, 16, 16), patch=8, **kw):
    torch.manual_seed(0)
    return PrimusEncoder(channels, size, patch, **{**TINY, **kw})


@pytest.mark.parametrize(
    "size,patch,tokenizer",
    [
        ((16, 16, 16), 8, "patch"),
        ((16, 24, 16), 8, "conv"),
        ((16, 24, 16), 4, "patch"),
        ((8, 16, 16), (4, 8, 8), "conv"),
    ],
)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("registers", [0, 2])
def test_shapes(size, patch, tokenizer, channels, registers):
    enc = encoder(channels, size, patch, tokenizer=tokenizer, num_register_tokens=registers)
    x = torch.randn(2, channels, *size)
    d, h, w = enc.grid_size
    assert enc.num_tokens == d * h * w and enc.family == "primus"
    assert enc.embed(x).shape == (2, d * h * w, 24)
    assert enc(x).shape == enc.forward_features(x).shape == (2, d * h * w, 24)
    final, inter = enc.forward_intermediates(x, [0, -1])
    assert final.shape == (2, 24, d, h, w) and [t.shape for t in inter] == [(2, 24, d, h, w)] * 2
    net = PrimusSegmenter(enc, 3)
    assert net.roi_size == tuple(size) and net(x).shape == (2, 3, *size)


@pytest.mark.parametrize("registers", [0, 2])
def test_intermediates_are_block_outputs_and_final_is_normed(registers):
    enc = encoder(num_layers=3, num_register_tokens=registers).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    tokens = enc._with_registers(enc.embed(x))
    outs = []
    for blk in enc.blocks:
        tokens = blk(tokens, enc.rope)
        outs.append(tokens[:, registers:])
    final, inter = enc.forward_intermediates(x, [1, -1])
    torch.testing.assert_close(inter[0], enc.to_volume(outs[1]))
    torch.testing.assert_close(inter[1], enc.to_volume(outs[2]))
    torch.testing.assert_close(final, enc.to_volume(enc.norm(outs[2])))
    torch.testing.assert_close(enc.to_volume(enc.forward_features(x)), final)


def test_rope_table_layout():
    """Axis parts d, h, w of hd / 3 channels each; pair m of a part turns by ``pos * theta ** (-m / (hd / 6))``."""
    grid, hd, theta = (2, 3, 4), 12, 100.0
    table = rope_table(grid, hd, theta)
    assert table.shape == (24, 2 * hd)
    sin, cos = table[:, :hd], table[:, hd:]
    token = (1 * 3 + 2) * 4 + 3  # position (1, 2, 3), row-major with w fastest
    for axis, pos in enumerate((1, 2, 3)):
        for m in range(hd // 6):
            angle = pos * theta ** (-m / (hd // 6))
            for c in (2 * m, 2 * m + 1):
                channel = axis * hd // 3 + c
                assert math.isclose(sin[token, channel].item(), math.sin(angle), abs_tol=1e-6)
                assert math.isclose(cos[token, channel].item(), math.cos(angle), abs_tol=1e-6)


def test_rope_is_a_rotation_with_relative_scores():
    """``q . k`` after RoPE depends on the position difference only, and rotation keeps norms."""
    torch.manual_seed(0)
    grid, hd = (4, 4, 4), 12
    table = rope_table(grid, hd)

    def idx(i, j, k):
        return (i * grid[1] + j) * grid[2] + k

    q, k = torch.randn(hd), torch.randn(hd)

    def score(pq, pk):
        return apply_rope(q, table[idx(*pq)]) @ apply_rope(k, table[idx(*pk)])

    base = score((0, 1, 0), (2, 3, 1))
    assert torch.allclose(score((1, 1, 2), (3, 3, 3)), base, atol=1e-5)  # both shifted by (1, 0, 2)
    assert not torch.allclose(score((0, 1, 0), (3, 3, 1)), base, atol=1e-4)  # another offset, another score
    assert torch.allclose(apply_rope(q, table[idx(3, 2, 1)]).norm(), q.norm(), atol=1e-5)
    torch.testing.assert_close(apply_rope(q, table[0]), q)  # position 0: no rotation


@pytest.mark.parametrize("registers", [0, 2])
def test_token_subsets_carry_their_positions(registers):
    """forward_tokens is equivariant to reordering tokens together with their ids, but not to moving tokens to other
    positions: RoPE makes attention position-aware (registers are not rotated, so this holds with them too)."""
    enc = encoder(size=(16, 24, 16), patch=4, num_register_tokens=registers).eval()
    with torch.no_grad():  # at init attention barely moves the residual stream (LayerScale 0.1, std 0.02 weights)
        for blk in enc.blocks:
            blk.attn.qkv.weight.mul_(20)
            blk.gamma_1.fill_(1.0)
    x = torch.randn(2, 1, 16, 24, 16)
    full = enc.embed(x)
    ids = torch.stack([torch.randperm(enc.num_tokens)[:7] for _ in range(2)])
    tokens = enc.embed_tokens(x, ids)
    out = enc.forward_tokens(tokens, ids)
    assert out.shape == (2, 7, 24)
    perm = torch.randperm(7)
    torch.testing.assert_close(enc.forward_tokens(tokens[:, perm], ids[:, perm]), out[:, perm], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc.forward_tokens(tokens[:, perm], ids), out[:, perm], atol=1e-2)
    enc.use_rope = False  # without RoPE the blocks cannot tell where a token sits
    out = enc.forward_tokens(tokens, ids)
    torch.testing.assert_close(enc.forward_tokens(tokens[:, perm], ids), out[:, perm], atol=1e-5, rtol=1e-5)
    enc.use_rope = True
    # the full grid with explicit ids in grid order is the default path
    all_ids = torch.arange(enc.num_tokens).expand(2, -1)
    torch.testing.assert_close(enc.forward_tokens(full, all_ids), enc.forward_tokens(full), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokenizer,channels,patch", [("patch", 1, 8), ("patch", 2, (4, 8, 8)), ("conv", 1, 8)])
def test_embed_tokens_equals_embed_then_gather(tokenizer, channels, patch):
    enc = encoder(channels, (16, 16, 16), patch, tokenizer=tokenizer)
    x = torch.randn(3, channels, 16, 16, 16)
    full = enc.embed(x)
    ids = torch.stack([torch.randperm(full.shape[1])[:3] for _ in range(3)])
    expect = torch.gather(full, 1, ids.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(enc.embed_tokens(x, ids), expect, atol=1e-5, rtol=1e-5)


def test_block_structure_layer_scale_and_clean_state_dict():
    enc = encoder(num_register_tokens=2)
    blk = enc.blocks[0]
    assert blk.mlp.fc1_g.out_features == blk.mlp.fc1_x.out_features == int(24 * 8 / 3)
    assert blk.mlp.norm.normalized_shape == (64,) and blk.attn.norm.normalized_shape == (24,)
    for b in enc.blocks:
        assert torch.equal(b.gamma_1, torch.full((24,), 0.1)) and torch.equal(b.gamma_2, torch.full((24,), 0.1))
    keys = set(enc.state_dict())
    assert {
        "pos_embed",
        "reg_token",
        "patch_embed.proj.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.q_bias",
    } <= keys
    assert not any(k == "rope" or k.endswith(".rope") for k in keys)  # the RoPE table is rebuilt, not stored
    assert enc.pos_embed.shape == (1, 8, 24) and enc.reg_token.shape == (1, 2, 24)
    assert "blocks.0.gamma_1" not in encoder(layer_scale_init=None).state_dict()
    assert "blocks.0.attn.q_bias" not in encoder(qkv_bias=False).state_dict()


def test_drop_path_is_linear_in_depth_and_off_in_eval():
    enc = encoder(num_layers=3, drop_path_rate=0.5)
    assert isinstance(enc.blocks[0].drop_path1, torch.nn.Identity)
    assert [b.drop_path1.drop_prob for b in enc.blocks[1:]] == pytest.approx([0.25, 0.5])
    x = torch.randn(4, 1, 16, 16, 16)
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    enc.train()
    torch.manual_seed(1)
    a = enc(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, enc(x))


def test_layer_ids_for_layer_decay():
    enc = encoder(num_layers=3, num_register_tokens=1)
    ids = {name: enc.layer_id(name) for name, _ in enc.named_parameters()}
    assert ids["patch_embed.proj.weight"] == ids["pos_embed"] == ids["reg_token"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.fc2.bias"] == 3 and ids["norm.weight"] == 4
    net = PrimusSegmenter(enc, 2)
    groups = param_groups(net, weight_decay=0.05, layer_decay=0.5)
    assert {g["name"].split("_")[0] for g in groups} == {f"layer{i}" for i in range(5)}


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(tokenizer="conv", num_register_tokens=2, patch=4),
        dict(rope=False, qkv_bias=False, layer_scale_init=None),
    ],
)
def test_encoder_and_segmenter_script(kw):
    kw = dict(kw)
    patch = kw.pop("patch", 8)
    enc = encoder(size=(16, 24, 16), patch=patch, **kw).eval()
    net = PrimusSegmenter(enc, 3).eval()
    x = torch.randn(1, 1, 16, 24, 16)
    torch.testing.assert_close(torch.jit.script(enc)(x), enc(x))
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_backward_reaches_every_parameter():
    enc = encoder(tokenizer="conv", num_register_tokens=2, drop_path_rate=0.2)
    net = PrimusSegmenter(enc, 2).train()
    out = net(torch.randn(2, 1, 16, 16, 16))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.endswith(".bias") or ".blocks." in name:  # conv biases before an InstanceNorm get ~0
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(img_size=20), r"nearest valid sizes: \(16, 16, 16\) or \(24, 24, 24\)"),
        (dict(hidden_size=25), r"not divisible by num_heads=2; nearest valid hidden sizes: 24 or 26"),
        (dict(hidden_size=32), r"multiple of 6 .*nearest valid hidden sizes 24 or 36"),
        (dict(num_heads=3, hidden_size=24), r"head width 8; 3D RoPE .* 18 or 36"),
        (dict(num_layers=0), "num_layers=0"),
        (dict(in_channels=0), "in_channels=0"),
        (dict(tokenizer="linear"), r"tokenizer='linear': expected one of patch, conv"),
        (dict(tokenizer="conv", img_size=12, patch_size=6), r"power-of-two patch sizes; nearest valid: \(8, 8, 8\)"),
        (dict(pos_embed="sincos"), "pos_embed='sincos'"),
        (dict(pos_embed="none", rope=False), "without position"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(num_register_tokens=-1), "num_register_tokens"),
    ],
)
def test_bad_arguments(kwargs, match):
    base = dict(in_channels=1, img_size=16, patch_size=8, **TINY)
    with pytest.raises(ValueError, match=match):
        PrimusEncoder(**{**base, **kwargs})


def test_hidden_sizes_valid_without_rope():
    assert PrimusEncoder(1, 16, 8, hidden_size=32, num_layers=1, num_heads=2, rope=False).hidden_size == 32


def test_bad_inputs_are_explained():
    enc = encoder()
    with pytest.raises(ValueError, match=r"built for img_size=\(16, 16, 16\)"):
        enc(torch.zeros(1, 1, 24, 16, 16))
    with pytest.raises(ValueError, match="out of range for 2 blocks"):
        enc.forward_intermediates(torch.zeros(1, 1, 16, 16, 16), [2])
    tokens = torch.zeros(1, 3, 24)
    with pytest.raises(ValueError, match="got 3 tokens without ids; the full grid has 8"):
        enc.forward_tokens(tokens)
    with pytest.raises(ValueError, match="do not match tokens"):
        enc.forward_tokens(tokens, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"decoder needs power-of-two patch sizes; nearest valid: \(4, 4, 4\)"):
        PrimusSegmenter(PrimusEncoder(1, 15, 3, **TINY), 2)
    with pytest.raises(ValueError, match="out_channels=0"):
        PrimusSegmenter(enc, 0)
