"""The DynUNet CNN peer: the nnU-Net plan, the preset, checkpoints and the refusals."""

import math

import pytest
import torch

from volmae.artifact import ModelArtifact
from volmae.engine.finetune import FinetuneConfig, finetune
from volmae.errors import ConfigError
from volmae.networks.dynunet import build_dynunet_network, nnunet_plan
from volmae.networks.registry import build_encoder, build_mae, build_network, build_segmenter, fit_roi


@pytest.mark.parametrize(
    "size, spacing, strides",
    [
        ((40, 56, 40), 1.0, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]),  # hippocampus: 5 x 7 x 5 at the bottom
        ((16, 32, 32), 1.0, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]),  # an axis stops at min_size 4
        ((32, 64, 64), (3.0, 1.0, 1.0), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]),  # thick slices wait
    ],
)
def test_plan_halves_axes_until_small_odd_or_coarse(size, spacing, strides):
    plan = nnunet_plan(size, spacing)
    assert plan["strides"] == strides
    assert plan["filters"] == [min(32 * 2**i, 320) for i in range(len(strides))]
    assert len(plan["kernel_size"]) == len(strides)


def test_plan_uses_in_plane_kernels_on_thick_slices():
    plan = nnunet_plan((32, 64, 64), (3.0, 1.0, 1.0))
    assert plan["kernel_size"][0] == [1, 3, 3]  # 3 mm slices vs 1 mm in plane: no kernel across slices yet
    assert plan["kernel_size"][-1] == [3, 3, 3]  # after two in-plane halvings the voxels are near-isotropic


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(img_size=(40, 56)), "img_size"),
        (dict(img_size=(5, 5, 5)), "too small"),
        (dict(img_size=32, spacing=(1.0, 0.0, 1.0)), "spacing"),
        (dict(img_size=32, max_levels=0), "max_levels"),
    ],
)
def test_plan_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        nnunet_plan(**kw)


@pytest.mark.parametrize("channels, classes, roi", [(1, 3, (40, 56, 40)), (2, 4, (32, 32, 16))])
def test_preset_segments_and_rebuilds_from_its_config(channels, classes, roi):
    net, config = build_segmenter("dynunet", channels, classes, roi)
    assert config.kind == "dynunet" and config.window == roi and config.to_dict()["img_size"] == list(roi)
    x = torch.randn(1, channels, *roi)
    assert net(x).shape == (1, classes, *roi)
    again = build_network(config.to_dict())
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.eval()(x), net.eval()(x))


def test_refusals_name_the_option():
    with pytest.raises(ConfigError, match="takes no patch_size, feature_size"):
        build_segmenter("dynunet", 1, 3, 32, patch_size=8, feature_size=8)
    with pytest.raises(ConfigError, match="CNN peer"):
        build_mae("dynunet", 1, 32)
    with pytest.raises(ConfigError, match="nothing to pretrain"):
        build_encoder("dynunet", 1, 32)
    with pytest.raises(ValueError, match="unknown DynUNet arguments"):
        build_dynunet_network(in_channels=1, out_channels=2, kernel_size=[3], strides=[1], upsample_kernel_size=[],
                              filters=[8], res_block=False, deep_supervision=True)  # fmt: skip
    assert fit_roi("dynunet", (35, 50, 35)) == (40, 56, 40)


def test_trains_with_the_engine_and_loads_for_inference_at_another_window(synthetic_task, tmp_path):
    res = finetune(
        FinetuneConfig(
            str(synthetic_task), str(tmp_path / "run"), preset="dynunet", roi_size=(16, 16, 16), epochs=2,
            batch_size=2, num_samples=1, val_every=2, device="cpu", quiet=True,
        )
    )  # fmt: skip
    assert res.history[-1]["step"] == 2 * math.ceil(res.num_train_cases / 2) and "val_dice" in res.history[-1]
    losses = [h["loss"] for h in res.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    saved = ModelArtifact.load(res.model_path, role="segmentation")
    model = saved.build(roi_size=(24, 24, 16))
    assert model(torch.randn(1, 1, 24, 24, 16)).shape == (1, 3, 24, 24, 16)
    same = saved.build()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), same(x), atol=1e-5)  # the same weights at either window
