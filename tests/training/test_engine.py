"""Fine-tuning engine: the channels-last CPU layout trains the same network as the plain one."""

import pytest
import torch

from volmae.networks.registry import build_segmenter
from volmae.training.engine import FinetuneConfig, finetune


@pytest.mark.realdata
@pytest.mark.parametrize("preset, roi", [("vit-tiny", (24, 32, 24)), ("nnformer-tiny", (32, 32, 32))])
def test_channels_last_fine_tunes_like_the_plain_layout_on_real_mri(msd_hippocampus, tmp_path, preset, roi):
    runs = {}
    for layout in (True, False):
        result = finetune(
            FinetuneConfig(
                str(msd_hippocampus), str(tmp_path / str(layout)), preset=preset, roi_size=roi, epochs=2,
                batch_size=2, num_samples=1, label_fraction=0.03, val_cases=2, val_every=2, lr=2e-3,
                warmup_epochs=0, device="cpu", quiet=True, channels_last=layout,
            )
        )  # fmt: skip
        state = torch.load(result.model_path, weights_only=True)["model"]
        runs[layout] = ([h["loss"] for h in result.history], result.history[-1]["val_dice"], state)
    (cl_loss, cl_dice, cl_w), (plain_loss, plain_dice, plain_w) = runs[True], runs[False]
    conv = next(v for v in cl_w.values() if v.ndim == 5 and v.shape[1] > 1 and v.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)  # the run did train channels-last
    assert cl_loss == pytest.approx(plain_loss, rel=1e-3)
    assert cl_dice == pytest.approx(plain_dice, abs=1e-3)
    # Adam turns float-rounding differences of near-zero gradients into lr-sized steps, so the weights drift apart
    # a little (~1 % of what training moved them for UNETR here); a wrong update would be of the order of the move
    torch.manual_seed(0)  # the runs' seed: their initial weights
    start = build_segmenter(preset, 1, 3, roi).state_dict()

    def dist(a, b):
        return sum((a[k] - b[k]).pow(2).sum().item() for k in start if start[k].is_floating_point())

    assert dist(cl_w, plain_w) < 0.05 * dist(plain_w, start)
