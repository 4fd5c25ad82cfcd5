"""volmae model files <-> plain MONAI UNETR / ViT: same outputs after conversion, clear refusals otherwise."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR as MonaiUNETR
from monai.networks.nets import ViT as MonaiViT

from tests.conftest import model_file
from volmae.artifact import ModelArtifact
from volmae.artifact.monai import export_to_monai, import_monai_unetr, monai_unetr_sizes
from volmae.errors import CheckpointError
from volmae.networks.registry import build_mae, build_unetr

SMALL = dict(hidden_size=48, mlp_dim=64, num_heads=4)
ROI = (32, 32, 48)


def _artifact(built, tmp_path) -> ModelArtifact:
    return ModelArtifact.load(model_file(built, tmp_path / "model.pt"))


def _randomise(model: torch.nn.Module) -> None:
    """Non-trivial weights everywhere (norm affines included), so a key mix-up cannot go unnoticed."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("norm_name", ["instance", "batch"])
def test_volmae_unetr_exports_to_an_identical_monai_unetr(norm_name, tmp_path):
    torch.manual_seed(0)
    built = build_unetr("vit-base", 2, 4, ROI, 16, 8, norm_name=norm_name, skip_norm=False, **SMALL)
    net = built.model.eval()
    _randomise(net)
    cls, kwargs, state = export_to_monai(_artifact(built, tmp_path))
    assert cls == "UNETR" and kwargs["out_channels"] == 4 and kwargs["img_size"] == list(ROI)
    monai_net = MonaiUNETR(**kwargs).eval()
    monai_net.load_state_dict(state, strict=True)
    x = torch.randn(1, 2, *ROI)
    with torch.no_grad():
        torch.testing.assert_close(monai_net(x), net(x), atol=1e-5, rtol=1e-4)


def test_monai_unetr_imports_as_a_volmae_checkpoint(tmp_path):
    torch.manual_seed(0)
    monai_net = MonaiUNETR(1, 3, ROI, feature_size=8, qkv_bias=True, **SMALL).eval()
    _randomise(monai_net)
    sizes = monai_unetr_sizes(monai_net.state_dict())
    assert sizes["num_tokens"] == 2 * 2 * 3 and sizes["feature_size"] == 8 and sizes["qkv_bias"]
    imported = import_monai_unetr(monai_net.state_dict(), img_size=ROI, num_heads=4, preprocessing="ct")
    imported.save(tmp_path / "model.pt")
    model = ModelArtifact.load(tmp_path / "model.pt", role="segmentation")
    assert model.task.labels == {0: "background", 1: "class_1", 2: "class_2"}
    assert model.task.preprocessing.roi_size == ROI and model.provenance.stage == "import"
    net = model.build()
    x = torch.randn(1, 1, *ROI)
    with torch.no_grad():
        torch.testing.assert_close(net(x), monai_net(x), atol=1e-5, rtol=1e-4)
    # ... and back again, exactly
    cls, kwargs, state = export_to_monai(model)
    assert all(torch.equal(state[k], v) for k, v in monai_net.state_dict().items())


def test_monai_default_roi_is_the_cube_of_the_tokens():
    monai_net = MonaiUNETR(1, 2, 32, feature_size=4, **SMALL)
    imported = import_monai_unetr(monai_net.state_dict(), num_heads=4)
    assert imported.network.window == (32, 32, 32)
    with pytest.raises(CheckpointError, match="not a cube; pass img_size"):
        import_monai_unetr(MonaiUNETR(1, 2, ROI, feature_size=4, **SMALL).state_dict(), num_heads=4)
    with pytest.raises(CheckpointError, match=r"img_size \[64, 64, 64\] gives 64 tokens, the weights have 8"):
        import_monai_unetr(monai_net.state_dict(), img_size=64, num_heads=4)
    named = import_monai_unetr(monai_net.state_dict(), num_heads=4, labels={0: "bg", 1: "lesion"})
    assert named.task.labels == {0: "bg", 1: "lesion"}
    with pytest.raises(CheckpointError, match="3 label names for a network with 2 output channels"):
        import_monai_unetr(monai_net.state_dict(), num_heads=4, labels={0: "bg", 1: "x", 2: "y"})
    with pytest.raises(CheckpointError, match="not a MONAI UNETR state dict"):
        import_monai_unetr({"a": torch.zeros(1)})


def test_skip_norm_model_is_refused_but_its_encoder_exports(tmp_path):
    built = build_unetr("vit-base", 1, 2, 32, 16, 4, **SMALL)  # skip_norm=True: volmae's default
    net = built.model.eval()
    with pytest.raises(CheckpointError, match="skip LayerNorms"):
        export_to_monai(_artifact(built, tmp_path))
    cls, kwargs, state = export_to_monai(_artifact(built, tmp_path), encoder_only=True)
    assert cls == "ViT"
    vit = MonaiViT(**kwargs).eval()
    vit.load_state_dict(state, strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        out, _ = vit(x)
        torch.testing.assert_close(out, net.encoder.forward_features(x), atol=1e-5, rtol=1e-4)


def test_patch8_unetr_refused_and_mae_exports_its_encoder(tmp_path):
    net = build_unetr("vit-tiny", 1, 2, 32, 8, 4, skip_norm=False, hidden_size=24, mlp_dim=32, num_heads=2)
    with pytest.raises(CheckpointError, match=r"patch \[8, 8, 8\].*MONAI's UNETR is fixed to 16"):
        export_to_monai(_artifact(net, tmp_path))
    mae = build_mae("vit-tiny", 1, 32, 8, decoder_dim=12, decoder_depth=1, decoder_heads=2, hidden_size=24,
                    mlp_dim=32, num_heads=2, num_layers=2)  # fmt: skip
    cls, kwargs, state = export_to_monai(_artifact(mae, tmp_path))
    assert cls == "ViT" and kwargs["patch_size"] == [8, 8, 8] and kwargs["pos_embed_type"] == "sincos"
    MonaiViT(**kwargs).load_state_dict(state, strict=True)
    nnformer = build_mae("nnformer-tiny", 1, 16, embed_dim=12, num_heads=(2, 2, 4))
    with pytest.raises(CheckpointError, match="masked-volume model; MONAI has no such network"):
        export_to_monai(_artifact(nnformer, tmp_path))
