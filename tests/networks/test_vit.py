import pytest
import torch
from monai.networks.nets import ViT

from volmae.networks.vit import ViTEncoder


@pytest.mark.parametrize("patch,size", [(8, (16, 24, 16)), (16, (32, 32, 48)), ((8, 8, 4), (16, 16, 8))])
@pytest.mark.parametrize("channels", [1, 2])
def test_shapes(patch, size, channels):
    enc = ViTEncoder(channels, size, patch, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4)
    x = torch.randn(2, channels, *size)
    d, h, w = enc.grid_size
    assert enc.forward_features(x).shape == (2, d * h * w, 48)
    final, inter = enc.forward_intermediates(x, [0, 2])
    assert final.shape == (2, 48, d, h, w)
    assert [t.shape for t in inter] == [(2, 48, d, h, w)] * 2


def test_intermediates_are_block_outputs_and_final_is_normed():
    enc = ViTEncoder(1, 16, 8, hidden_size=24, mlp_dim=48, num_layers=3, num_heads=2).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    tokens = enc.embed(x)
    outs = []
    for blk in enc.blocks:
        tokens = blk(tokens)
        outs.append(tokens)
    final, inter = enc.forward_intermediates(x, [1, -1])
    assert torch.allclose(inter[0], enc.to_volume(outs[1]))
    assert torch.allclose(inter[1], enc.to_volume(outs[2]))
    assert torch.allclose(final, enc.to_volume(enc.norm(outs[2])))


def test_matches_monai_vit_weights():
    """Same module names as MONAI's ViT: its weights load strictly and give the same features."""
    kw = dict(
        in_channels=1,
        img_size=(16, 16, 16),
        patch_size=8,
        hidden_size=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=4,
        qkv_bias=True,
    )
    monai_vit = ViT(**kw, pos_embed_type="sincos").eval()
    enc = ViTEncoder(**kw).eval()
    enc.load_state_dict(monai_vit.state_dict(), strict=True)
    x = torch.randn(2, 1, 16, 16, 16)
    assert torch.allclose(monai_vit(x)[0], enc.forward_features(x), atol=1e-5)


def test_sincos_embedding_is_fixed():
    enc = ViTEncoder(1, 16, 8, hidden_size=24, mlp_dim=48, num_layers=1, num_heads=2)
    assert not enc.patch_embedding.position_embeddings.requires_grad
    learn = ViTEncoder(1, 16, 8, hidden_size=24, mlp_dim=48, num_layers=1, num_heads=2, pos_embed_type="learnable")
    assert learn.patch_embedding.position_embeddings.requires_grad


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_size=50, num_heads=4), "not divisible by num_heads"),
        (dict(hidden_size=40, num_heads=4), "multiple of 6"),
        (dict(img_size=20), "nearest valid sizes"),
        (dict(spatial_dims=2), "3D only"),
        (dict(pos_embed_type="rope"), "pos_embed_type"),
        (dict(num_layers=0), "num_layers"),
    ],
)
def test_bad_arguments(kwargs, match):
    base = dict(in_channels=1, img_size=16, patch_size=8, hidden_size=24, mlp_dim=48, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=match):
        ViTEncoder(**{**base, **kwargs})


def test_wrong_input_shape_is_explained():
    enc = ViTEncoder(1, 16, 8, hidden_size=24, mlp_dim=48, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="built for img_size=\\(16, 16, 16\\)"):
        enc(torch.zeros(1, 1, 24, 16, 16))
    with pytest.raises(ValueError, match="out of range"):
        enc.forward_intermediates(torch.zeros(1, 1, 16, 16, 16), [5])


@pytest.mark.parametrize("channels,patch", [(1, 8), (2, (4, 8, 8))])
def test_embed_tokens_equals_embed_then_gather(channels, patch):
    torch.manual_seed(0)
    enc = ViTEncoder(channels, (16, 32, 32), patch, hidden_size=24, mlp_dim=48, num_layers=1, num_heads=2)
    x = torch.randn(3, channels, 16, 32, 32)
    full = enc.embed(x)
    ids = torch.stack([torch.randperm(full.shape[1])[:5] for _ in range(3)])
    expect = torch.gather(full, 1, ids.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert torch.allclose(enc.embed_tokens(x, ids), expect, atol=1e-5)
    with pytest.raises(ValueError, match="expected input"):
        enc.embed_tokens(x[:, :, :8], ids)
