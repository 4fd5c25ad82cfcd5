"""Masked-volume pretraining of the nnFormer encoder: masking at bottleneck units, no leak, loss on masked units."""

import pytest
import torch

from volmae.networks.masked_volume import MaskedVolumeModel
from volmae.networks.nnformer_encoder import NnFormerEncoder


def model(ratio=0.6, **kw):
    enc = NnFormerEncoder(1, (16, 24, 16), 2, 12, (1, 1), (2, 4), (2, 0))
    return MaskedVolumeModel(enc, ratio, **kw)


def test_units_are_bottleneck_tokens_and_shapes():
    m = model()
    assert m.patch_size == (4, 4, 4) and m.grid_size == (4, 6, 4)
    x = torch.randn(2, 1, 16, 24, 16)
    loss, pred, mask = m(x, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, 96, 64) and mask.shape == (2, 96)
    assert mask.sum(1).tolist() == [96 - round(96 * 0.4)] * 2
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_masked_voxels_do_not_reach_the_encoder():
    torch.manual_seed(0)
    m = model().eval()
    x = torch.randn(1, 1, 16, 24, 16)
    mask = m.random_masking(1, x.device, generator=torch.Generator().manual_seed(1))
    vox = m._expand(mask, m.patch_size).bool()
    x2 = x.clone()
    x2[vox] += 100.0  # change only what is masked
    assert torch.allclose(m.forward_encoder(x, mask), m.forward_encoder(x2, mask), atol=1e-5)


def test_loss_counts_masked_units_only():
    m = model()
    x = torch.randn(1, 1, 16, 24, 16)
    mask = torch.zeros(1, 96)
    mask[0, :10] = 1
    target = m.patch_targets(x)
    pred = target.clone()
    pred[0, 50:] += 3.0  # wrong only on visible units
    assert m.forward_loss(x, pred, mask).item() == pytest.approx(0.0, abs=1e-6)
    pred[0, :10] += 1.0
    assert m.forward_loss(x, pred, mask).item() == pytest.approx(1.0, rel=1e-4)


def test_reconstruction_pictures_and_gradients():
    m = model(decoder_dim=16)
    x = torch.randn(1, 1, 16, 24, 16)
    views = m.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert views["pasted"].shape == x.shape and set(views["mask"].unique().tolist()) <= {0.0, 1.0}
    visible = views["mask"] == 0
    assert torch.allclose(views["pasted"][visible], x[visible])
    loss, _, _ = m(x)
    loss.backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, message", [(dict(ratio=1.0), "mask_ratio=1.0"), (dict(decoder_dim=-1), "decoder_dim")]
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_every_trainable_parameter_takes_part_in_the_loss():
    """DDP (find_unused_parameters=False) needs a gradient for every trainable parameter on every step."""
    m = model()
    loss, _, _ = m(torch.randn(2, 1, 16, 24, 16))
    loss.backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not m.encoder.norms[0].weight.requires_grad and m.encoder.norms[-1].weight.requires_grad
