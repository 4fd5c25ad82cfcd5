import pytest
import torch
from monai.networks.blocks import PatchEmbeddingBlock

from volmae.networks.patching import as_tuple, grid_size, patchify, unpatchify


@pytest.mark.parametrize("patch", [(8, 8, 8), (16, 16, 16), (4, 8, 2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip(patch, channels):
    x = torch.randn(2, channels, 16, 32, 16)
    grid = grid_size(x.shape[2:], patch)
    tokens = patchify(x, patch)
    assert tokens.shape == (2, grid[0] * grid[1] * grid[2], patch[0] * patch[1] * patch[2] * channels)
    assert torch.equal(unpatchify(tokens, patch, grid, channels), x)


def test_token_order_matches_patch_embedding():
    """Token i of patchify is the patch that MONAI's conv patch embedding turns into token i."""
    patch, size = (4, 4, 4), (8, 12, 8)
    emb = PatchEmbeddingBlock(1, size, patch, hidden_size=64, num_heads=1, pos_embed_type="none")
    with torch.no_grad():  # embedding = the flattened patch, in the same (p1 p2 p3) order
        emb.patch_embeddings.weight.copy_(torch.eye(64).reshape(64, 1, 4, 4, 4))
        emb.patch_embeddings.bias.zero_()
    x = torch.randn(1, 1, *size)
    assert torch.allclose(emb(x), patchify(x, patch), atol=1e-6)


def test_not_divisible_names_nearest_sizes():
    with pytest.raises(ValueError, match=r"nearest valid sizes: \(8, 16, 8\) or \(16, 24, 16\)"):
        patchify(torch.zeros(1, 1, 12, 20, 12), (8, 8, 8))


def test_bad_arguments():
    with pytest.raises(ValueError, match="B C D H W"):
        patchify(torch.zeros(1, 8, 8, 8), (8, 8, 8))
    with pytest.raises(ValueError, match="do not fit"):
        unpatchify(torch.zeros(1, 7, 512), (8, 8, 8), (2, 2, 2), 1)
    with pytest.raises(ValueError, match="patch_size"):
        as_tuple((8, 8), 3, "patch_size")
    with pytest.raises(ValueError, match="positive"):
        as_tuple(0, 3, "img_size")
