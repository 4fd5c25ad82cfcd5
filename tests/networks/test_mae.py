import pytest
import torch

from volmae.networks.mae import MaskedAutoencoder
from volmae.networks.patching import patchify
from volmae.networks.vit import ViTEncoder


def make_mae(size=(16, 16, 32), patch=8, ratio=0.75, channels=1, norm_pix=True):
    enc = ViTEncoder(channels, size, patch, hidden_size=24, mlp_dim=48, num_layers=2, num_heads=2)
    return MaskedAutoencoder(
        enc, decoder_dim=24, decoder_depth=1, decoder_heads=2, mask_ratio=ratio, norm_pix_loss=norm_pix
    )


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_masking_invariants(ratio):
    mae = make_mae(ratio=ratio)
    tokens = torch.randn(3, 8, 24)
    g = torch.Generator().manual_seed(0)
    visible, mask, ids_restore = mae.random_masking(tokens, generator=g)
    keep = round(8 * (1 - ratio))
    assert visible.shape == (3, keep, 24)
    assert mask.shape == (3, 8) and torch.all(mask.sum(1) == 8 - keep)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for b in range(3):  # visible tokens are exactly the unmasked ones, in shuffle order
        kept = tokens[b][mask[b] == 0]
        assert sorted(map(tuple, kept.tolist())) == sorted(map(tuple, visible[b].tolist()))
        assert sorted(ids_restore[b].tolist()) == list(range(8))


def test_masking_is_per_sample_and_seeded():
    mae = make_mae(size=(32, 32, 32))
    tokens = torch.randn(4, 64, 24)
    _, m1, _ = mae.random_masking(tokens, generator=torch.Generator().manual_seed(1))
    _, m2, _ = mae.random_masking(tokens, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m1, m2)
    assert len({tuple(r.tolist()) for r in m1}) > 1


def test_encoder_sees_visible_tokens_only():
    mae = make_mae(size=(32, 32, 32), ratio=0.75)  # 64 tokens, 16 visible
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    mae(torch.randn(2, 1, 32, 32, 32))
    assert seen == [16]


def test_loss_counts_masked_patches_only():
    mae = make_mae()
    x = torch.randn(2, 1, 16, 16, 32)
    _, pred, mask = mae(x, generator=torch.Generator().manual_seed(0))
    base = mae.forward_loss(x, pred, mask)
    changed_visible = pred.clone()
    changed_visible[mask == 0] += 100.0
    assert torch.allclose(mae.forward_loss(x, changed_visible, mask), base)
    changed_masked = pred.clone()
    changed_masked[mask == 1] += 1.0
    assert mae.forward_loss(x, changed_masked, mask) > base + 0.5
    # perfect predictions on the masked patches give zero loss
    perfect = torch.where(mask[..., None] == 1, mae.patch_targets(x), pred)
    assert mae.forward_loss(x, perfect, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_norm_pix_targets_are_normalised_per_patch():
    mae = make_mae(norm_pix=True)
    x = torch.rand(1, 1, 16, 16, 32) * 1000 + 50
    t = mae.patch_targets(x)
    assert t.shape == (1, 16, 512)
    assert t.mean(-1).abs().max() < 1e-4
    assert (t.std(-1) - 1).abs().max() < 1e-2
    raw = make_mae(norm_pix=False).patch_targets(x)
    assert torch.equal(raw, patchify(x, (8, 8, 8)))


def test_reconstruct_views():
    mae = make_mae(channels=2).eval()
    x = torch.randn(1, 2, 16, 16, 32)
    v = mae.reconstruct(x, generator=torch.Generator().manual_seed(0))
    for k in ("original", "masked", "reconstruction", "pasted", "mask"):
        assert v[k].shape == x.shape, k
    visible = v["mask"] == 0
    assert torch.allclose(v["pasted"][visible], x[visible])
    assert torch.allclose(v["masked"][visible], x[visible])
    assert torch.all(v["masked"][~visible] == 0)
    assert 0 < v["mask"].mean() < 1


def test_backward_reaches_encoder_and_decoder():
    mae = make_mae()
    loss, _, _ = mae(torch.randn(2, 1, 16, 16, 32))
    loss.backward()
    assert mae.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert mae.decoder_pred.weight.grad.abs().sum() > 0
    assert mae.mask_token.grad.abs().sum() > 0
    # DDP (find_unused_parameters=False) needs a gradient for every trainable parameter
    assert [n for n, p in mae.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=0.0), "mask_ratio"),
        (dict(decoder_dim=20, decoder_heads=4), "decoder_dim"),
        (dict(decoder_depth=0), "decoder_depth"),
    ],
)
def test_bad_arguments(kwargs, match):
    enc = ViTEncoder(1, 16, 8, hidden_size=24, mlp_dim=48, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=match):
        MaskedAutoencoder(enc, **{**dict(decoder_dim=24, decoder_depth=1, decoder_heads=2), **kwargs})


def test_encoder_input_is_the_embedding_of_the_visible_patches():
    """forward_encoder embeds only the visible patches; the result must equal embedding all, then masking."""
    mae = make_mae(size=(32, 32, 32), ratio=0.75)
    x = torch.randn(2, 1, 32, 32, 32)
    seen = []
    mae.encoder.blocks[0].register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    _, mask, ids_restore = mae.forward_encoder(x, generator=torch.Generator().manual_seed(3))
    full = mae.encoder.embed(x)
    for b in range(2):
        visible_ids = ids_restore.argsort(dim=1)[b, : seen[0].shape[1]]  # ids_shuffle[:keep]
        assert torch.all(mask[b, visible_ids] == 0)
        assert torch.allclose(seen[0][b], full[b, visible_ids], atol=1e-5)
