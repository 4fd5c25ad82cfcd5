"""S3D sparse-masked pretraining of the ResEnc U-Net (volmae.networks.s3d): nothing masked leaks into the encoder,
the loss counts masked blocks only, and the weights are a ResEnc U-Net's."""

import pytest
import torch
import torch.nn.functional as F

from volmae.errors import ConfigError
from volmae.networks.registry import build_mae, build_segmenter
from volmae.networks.s3d import SparseConv3d, SparseInstanceNorm3d

SMALL = dict(filters=[4, 8, 16])
ROI = (16, 24, 16)


def s3d(**kw):
    torch.manual_seed(0)
    return build_mae("resenc-tiny", 1, ROI, **SMALL, **kw)


def voxel_visible(model, mask):
    return F.interpolate(model.visible_grid(mask), size=ROI, mode="nearest")


def test_the_config_and_shapes():
    model, config = s3d()
    assert config.kind == "s3d" and config.family == "resenc" and config.role == "pretraining"
    assert config.arguments == {"mask_ratio": 0.75, "mask_ratio_max": None, "norm_pix_loss": False}
    assert model.patch_size == (4, 4, 4) and model.grid_size == (4, 6, 4)  # blocks = the total stride
    loss, pred, mask = model(torch.randn(2, 1, *ROI))
    assert pred.shape == (2, 96, 64) and mask.shape == (2, 96) and loss.ndim == 0
    assert (mask.sum(1) == 72).all()  # 75 % of 96 blocks


def test_changing_masked_voxels_changes_nothing_upstream_of_the_decoder():
    """Visible-only statistics: every encoder stage's output is the same whatever the masked voxels hold, and 0 at
    masked positions."""
    model, _ = s3d()
    x = torch.randn(2, 1, *ROI)
    m = model.draw_mask(2, model.num_units, x.device)
    hidden = 1 - voxel_visible(model, m.mask)
    before = model.forward_encoder(x, m.mask)
    after = model.forward_encoder(x + 10 * hidden * torch.randn_like(x), m.mask)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        v = F.interpolate(model.visible_grid(m.mask), size=a.shape[2:], mode="nearest")
        assert a.abs().sum() > 0 and (a * (1 - v)).abs().max() == 0
    # a dense encoder (the same layers, no mask set) does see them
    dense_before = model.encoder.forward_intermediates(x)
    dense_after = model.encoder.forward_intermediates(x + 10 * hidden)
    assert not torch.allclose(dense_before[-1], dense_after[-1])


def test_masked_norms_count_visible_voxels_only():
    model, _ = s3d()
    norm = next(m for m in model.encoder.modules() if isinstance(m, SparseInstanceNorm3d))
    x = torch.randn(1, norm.num_features, *ROI)
    m = model.draw_mask(1, model.num_units, x.device)
    model.visible.set(model.visible_grid(m.mask))
    y = norm(x)
    model.visible.set(None)
    v = voxel_visible(model, m.mask).bool()[0, 0]
    for c in range(norm.num_features):
        ref = F.instance_norm(x[:, c : c + 1, v][..., None, None], eps=norm.eps)[0, 0, :, 0, 0]
        ref = ref * norm.weight[c] + norm.bias[c]
        torch.testing.assert_close(y[0, c][v], ref, rtol=1e-4, atol=1e-4)
        assert y[0, c][~v].abs().max() == 0


def test_the_loss_ignores_visible_blocks():
    model, _ = s3d()
    x = torch.randn(2, 1, *ROI)
    _, pred, mask = model(x)
    changed = pred + 5.0 * (1 - mask).unsqueeze(-1)  # only visible blocks' predictions differ
    assert torch.equal(model.forward_loss(x, pred, mask), model.forward_loss(x, changed, mask))
    assert not torch.equal(model.forward_loss(x, pred, mask), model.forward_loss(x, pred + 1.0, mask))


def test_per_sample_mask_ratios_from_a_range():
    model, config = s3d(mask_ratio=0.6, mask_ratio_max=0.9)
    gen = torch.Generator().manual_seed(0)
    counts = model.draw_mask(64, model.num_units, torch.device("cpu"), generator=gen).mask.sum(1)
    assert counts.min() >= round(0.6 * 96) - 1 and counts.max() <= round(0.9 * 96) + 1
    assert len(set(counts.tolist())) > 5  # drawn per sample
    with pytest.raises(ConfigError, match="mask_ratio_max"):
        build_mae("resenc-tiny", 1, ROI, mask_ratio=0.8, mask_ratio_max=0.7, **SMALL)
    with pytest.raises(ConfigError, match="applies to S3D"):
        build_mae("vit-tiny", 1, 16, mask_ratio_max=0.9)


def test_its_weights_are_a_resenc_unets_plus_mask_tokens_and_densify():
    model, _ = s3d()
    seg = build_segmenter("resenc-tiny", 1, 3, ROI, **SMALL).model
    own, theirs = set(model.state_dict()), set(seg.state_dict())
    assert theirs - own == set()
    assert {k.split(".")[0] for k in own - theirs} == {"mask_tokens", "densify"}
    assert sum(isinstance(m, SparseConv3d) for m in model.encoder.modules()) > 0
    assert not any(isinstance(m, SparseConv3d) for m in model.ups.modules())  # the decoder stays dense


def test_reconstruction_views_for_pictures():
    model, _ = s3d()
    views = model.reconstruct(torch.randn(1, 1, *ROI), generator=torch.Generator().manual_seed(0))
    assert views["pasted"].shape == (1, 1, *ROI) and 0.7 < views["mask"].mean() < 0.8


def test_method_choices_are_checked():
    with pytest.raises(ConfigError, match="does not apply to the resenc preset"):
        build_mae("resenc-tiny", 1, ROI, method="mae")
    with pytest.raises(ConfigError, match="S3D reconstructs with the U-Net's own decoder"):
        build_mae("resenc-tiny", 1, ROI, decoder_dim=8)
    with pytest.raises(ConfigError, match="pretrain a ResEnc U-Net instead"):
        build_mae("dynunet", 1, ROI)
