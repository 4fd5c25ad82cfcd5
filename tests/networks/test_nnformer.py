"""nnFormer segmentation network: output shapes, deep supervision, skip attention, gradients, bad arguments."""

import pytest
import torch

from volmae.networks.nnformer import NnFormer, SkipAttention
from volmae.networks.nnformer_encoder import NnFormerEncoder


def net(out=3, ds=False, img=(16, 24, 16), depths=(2, 2, 1), **kw):
    enc = NnFormerEncoder(1, img, 2, 12, depths, (2, 4, 8)[: len(depths)], (2, 2, 0)[: len(depths)])
    return NnFormer(enc, out, deep_supervision=ds, **kw)


@pytest.mark.parametrize("img", [(16, 24, 16), (16, 16, 32)])
@pytest.mark.parametrize("out", [1, 4])
def test_output_is_full_resolution_logits(img, out):
    model = net(out, img=img).eval()
    assert model(torch.randn(2, 1, *img)).shape == (2, out, *img)
    assert model.roi_size == img


def test_deep_supervision_in_training_only():
    model = net(3, ds=True).train()
    outs = model(torch.randn(1, 1, 16, 24, 16))
    assert [o.shape[2:] for o in outs] == [(16, 24, 16), (8, 12, 8)]  # full, /2 (decoder stage 1)
    model.eval()
    assert model(torch.randn(1, 1, 16, 24, 16)).shape == (1, 3, 16, 24, 16)


def test_every_parameter_gets_a_gradient():
    model = net(2, ds=True).train()
    outs = model(torch.randn(1, 1, 16, 24, 16))
    sum(o.float().pow(2).mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_skip_attention_reads_the_skip_inside_its_window_only():
    torch.manual_seed(0)
    blk = SkipAttention(8, 2, (2, 2, 2)).eval()
    x, skip = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 4, 4, 4)
    y = blk(x, skip)
    skip2 = skip.clone()
    skip2[..., 0, 0, 0] += 5.0 * torch.randn(8)  # not a constant: LayerNorm would remove that
    y2 = blk(x, skip2)
    assert not torch.allclose(y[..., :2, :2, :2], y2[..., :2, :2, :2])  # the window holding the change
    assert torch.allclose(y[..., 2:, :, :], y2[..., 2:, :, :])  # other windows untouched


def test_bad_arguments():
    with pytest.raises(ValueError, match="decoder_depths=\\[1\\]: need 2 entries"):
        net(decoder_depths=[1])
    with pytest.raises(ValueError, match="out_channels=0"):
        net(0)
    with pytest.raises(ValueError, match=">= 2 stages"):
        NnFormer(NnFormerEncoder(1, 8, 2, 12, (1,), (2,), (0,)), 2)
