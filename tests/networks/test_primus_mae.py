"""The whole-network Primus MAE (volmae.networks.primus_mae): shapes, visible-only encoding, the loss, its weights."""

import pytest
import torch

from volmae.errors import ConfigError
from volmae.networks.patching import unpatchify
from volmae.networks.registry import build_mae, build_segmenter

ROI = (16, 24, 16)
TINY = dict(hidden_size=24, num_layers=2, num_heads=2, drop_path_rate=0.0)


def _mae(**kw):
    torch.manual_seed(0)
    return build_mae("primus-tiny", kw.pop("channels", 1), ROI, 8, decoder_depth=1, **TINY, **kw)


@pytest.mark.parametrize("tokenizer", ["patch", "conv"])
@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_and_the_config(tokenizer, channels):
    model, config = _mae(tokenizer=tokenizer, channels=channels)
    assert config.kind == "primus-mae" and config.family == "primus" and config.role == "pretraining"
    loss, pred, mask = model(torch.randn(2, channels, *ROI))
    assert pred.shape == (2, 12, 8**3 * channels) and mask.shape == (2, 12) and loss.ndim == 0
    assert int(mask.sum(1)[0]) == 9  # 75 % of 12 tokens
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("encoder.blocks", "decoder")))


@pytest.mark.parametrize("tokenizer", ["patch", "conv"])
def test_masked_voxels_never_reach_the_encoder(tokenizer):
    model, _ = _mae(tokenizer=tokenizer)
    model.eval()
    x = torch.randn(1, 1, *ROI)
    m = model.draw_mask(1, model.num_units, x.device, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(1, model.num_units, model.patch_dim) * m.mask.unsqueeze(-1)  # masked patches only
    y = x + unpatchify(noise, model.patch_size, model.grid_size, 1)
    seen = []
    handle = model.encoder.norm.register_forward_hook(lambda mod, i, out: seen.append(out))
    model.forward_masked(x, m)
    model.forward_masked(y, m)
    handle.remove()
    assert seen[0].shape[1] == 3 and torch.equal(seen[0], seen[1])  # the visible tokens' latent, unchanged


def test_the_loss_counts_masked_patches_only():
    model, _ = _mae()
    x = torch.randn(2, 1, *ROI)
    m = model.draw_mask(2, model.num_units, x.device, generator=torch.Generator().manual_seed(1))
    loss, pred, mask = model.forward_masked(x, m)
    per_patch = (pred - model.patch_targets(x)).pow(2).mean(-1)
    torch.testing.assert_close(loss, (per_patch * mask).sum() / mask.sum())
    other = pred + 3.0 * (1 - mask).unsqueeze(-1)  # another prediction on the visible patches
    torch.testing.assert_close(model.forward_loss(x, other, mask), loss)


def test_its_weights_are_a_primus_plus_mask_token_and_mixer():
    mae, _ = _mae()
    seg = build_segmenter("primus-tiny", 1, 1, ROI, 8, **TINY).model
    extra = {k for k in mae.state_dict() if k not in seg.state_dict()}
    assert {k.split(".")[0] for k in extra} == {"mask_token", "mixer", "mixer_norm"}
    assert all(k in mae.state_dict() for k in seg.state_dict())  # head included: C outputs, as the 1-class twin


def test_reconstruction_views_for_pictures():
    model, _ = _mae()
    views = model.reconstruct(torch.randn(1, 1, *ROI), generator=torch.Generator().manual_seed(0))
    assert views["reconstruction"].shape == (1, 1, *ROI) and 0.7 < views["mask"].mean() < 0.8


def test_bad_arguments():
    with pytest.raises(ConfigError, match="decoder_depth=0: must be >= 1"):
        build_mae("primus-tiny", 1, ROI, 8, decoder_depth=0, **TINY)
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        build_mae("primus-tiny", 1, (20, 24, 16), 8, **TINY)
