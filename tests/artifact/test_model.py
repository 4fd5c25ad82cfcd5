"""The model artifact: what a file holds, that files of volmae 0.1.0 still load to the same network, and one clear
line for every file that is not a usable model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import model_file
from volmae.artifact import FORMAT, FORMAT_VERSION, ModelArtifact, Provenance, Task, from_bundle, is_model_file
from volmae.artifact.bundles import open_model
from volmae.data.transforms import get_preprocessing
from volmae.errors import CheckpointError, ConfigError
from volmae.networks.registry import build_mae, build_segmenter

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1_0"
REFERENCE = json.loads((LEGACY / "reference_outputs.json").read_text())["outputs"]
PREP = get_preprocessing("hippocampus", roi_size=(16, 16, 16))


def _reference_input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 1, 16, 16, 16)


@pytest.mark.parametrize("kind", ["unetr", "nnformer", "dynunet"])
def test_segmentation_models_of_volmae_0_1_0_compute_what_they_did(kind):
    model = ModelArtifact.load(LEGACY / f"{kind}.pt", role="segmentation")
    assert model.kind == kind and model.provenance.volmae_version == "0.1.0"
    assert model.provenance.converted_from.startswith("volmae-checkpoint format 1")
    assert model.task.labels == {0: "background", 1: "anterior", 2: "posterior"} and model.task.output == "softmax"
    with torch.no_grad():
        y = model.build()(_reference_input())
    ref = REFERENCE[kind]
    assert float(y.mean()) == pytest.approx(ref["mean"], abs=1e-6)
    torch.testing.assert_close(y.flatten()[::997][:10], torch.tensor(ref["values"]), atol=1e-5, rtol=1e-5)


def test_a_pretraining_model_of_volmae_0_1_0_loads_as_one():
    model = ModelArtifact.load(LEGACY / "mae.pt", role="pretraining", family="vit")
    assert model.kind == "mae" and model.task.labels == {} and model.task.out_channels is None
    with torch.no_grad():
        tokens = model.build().encoder(_reference_input())
    torch.testing.assert_close(
        tokens.flatten()[::997][:10], torch.tensor(REFERENCE["mae"]["values"]), atol=1e-5, rtol=1e-5
    )


def test_save_and_load_round_trip_every_part(tmp_path):
    task = Task(PREP, 2, {0: "bg", 1: "edema", 2: "core"}, ("FLAIR", "T1c"), {"tumour": (1, 2), "core": (2,)}, "x")
    built = build_segmenter("vit-tiny", 2, 2, (16, 16, 16), feature_size=4, num_layers=3)  # 2 region outputs
    prov = Provenance.now("finetune", dataset="x", training_cases=("a", "b"), steps=7, seed=3, citation=("c",))
    ModelArtifact.from_network(built.model, built.config, task, prov).save(tmp_path / "m.pt")
    data = torch.load(tmp_path / "m.pt", weights_only=True)  # plain containers and tensors only
    assert (data["format"], data["version"], data["kind"]) == (FORMAT, FORMAT_VERSION, "unetr") and is_model_file(data)
    back = ModelArtifact.load(tmp_path / "m.pt")
    assert back.network == built.config and back.task == task and back.provenance == prov
    assert back.task.output == "regions" and back.task.out_channels == 2
    assert all(torch.equal(back.weights[k], v) for k, v in built.model.state_dict().items())
    assert "sigmoid regions tumour, core" in back.describe() and "(FLAIR, T1c)" in back.describe()


def test_a_model_rebuilds_for_another_window(tmp_path):
    path = model_file(build_segmenter("vit-tiny", 1, 3, (16, 16, 16), feature_size=4, num_layers=3), tmp_path / "m.pt")
    model = ModelArtifact.load(path)
    wide = model.build(roi_size=(16, 24, 16))
    assert wide(torch.randn(1, 1, 16, 24, 16)).shape == (1, 3, 16, 24, 16)
    with pytest.raises(CheckpointError, match=r"cannot build its network for roi_size=\(20, 16, 16\)"):
        model.build(roi_size=(20, 16, 16))  # not a multiple of the patch


def test_foreign_future_damaged_and_wrong_kind_files_are_one_line(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_segmenter("vit-tiny", 1, 3, 16, num_layers=3).model.state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"plain.pt: a plain state dict .* volmae-model import-monai"):
        ModelArtifact.load(plain)
    mae = model_file(build_mae("vit-tiny", 1, 16, num_layers=2, decoder_depth=1), tmp_path / "mae.pt")
    with pytest.raises(CheckpointError, match="mae.pt: a mae pretraining model, not a segmentation model"):
        ModelArtifact.load(mae, role="segmentation")
    with pytest.raises(CheckpointError, match="holds a vit network .*; this needs a nnformer one"):
        ModelArtifact.load(mae, family="nnformer")
    data = torch.load(mae, weights_only=True)
    for name, change, message in [
        ("future.pt", {"version": FORMAT_VERSION + 1}, "written by a newer volmae .*upgrade volmae"),
        ("other.pt", {"format": "nnunet"}, "format 'nnunet' is not a volmae model file"),
        ("damaged.pt", {"network": {"kind": "resnet"}}, "a damaged volmae model file"),
    ]:
        torch.save({**data, **change}, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: {message}"):
            ModelArtifact.load(tmp_path / name)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt: empty file"):
        ModelArtifact.load(tmp_path / "empty.pt")


def test_inconsistent_tasks_are_refused():
    with pytest.raises(ConfigError, match="label 0 \\(background\\) is missing"):
        Task(PREP, 1, {1: "a"})
    with pytest.raises(ConfigError, match="2 names for 1 input channels"):
        Task(PREP, 1, {0: "bg"}, ("T1", "T2"))
    with pytest.raises(ConfigError, match=r"label values \[5\] are not among labels"):
        Task(PREP, 1, {0: "bg", 1: "a"}, regions={"x": [5]})
    built = build_segmenter("vit-tiny", 1, 3, 16, num_layers=3)
    with pytest.raises(CheckpointError, match="the network has 3 outputs but its task has labels 0..1"):
        ModelArtifact.from_network(built.model, built.config, Task(PREP, 1, {0: "bg", 1: "a"}), Provenance())
    with pytest.raises(CheckpointError, match="takes 1 input channels, the task 2"):
        ModelArtifact.from_network(built.model, built.config, Task(PREP, 2, {0: "a", 1: "b", 2: "c"}), Provenance())


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    import volmae.utils.io as io

    path = model_file(build_segmenter("vit-tiny", 1, 3, 16, num_layers=3), tmp_path / "m.pt")
    before = path.read_bytes()
    model = ModelArtifact.load(path)

    def full_disk(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.torch, "save", full_disk)
    with pytest.raises(OSError):
        model.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp left


def test_a_bundle_is_a_model_too(tmp_path):
    """A shipped bundle with weights in models/model.pt (a plain state dict, as the zoo's tools expect; or the
    {"model": ...} files earlier volmae bundles wrote) opens as an artifact with the bundle's task."""
    import shutil

    from volmae.artifact.bundles import BUNDLES_DIR, bundle_network
    from volmae.networks import build_network

    root = tmp_path / "hippocampus"
    shutil.copytree(BUNDLES_DIR / "hippocampus", root, symlinks=True, ignore=shutil.ignore_patterns("models"))
    torch.manual_seed(0)
    net = build_network(bundle_network(root))
    (root / "models").mkdir()
    torch.save({"model": net.state_dict()}, root / "models" / "model.pt")  # MONAI CheckpointSaver's layout
    model = from_bundle(root)
    assert model.task.labels == {0: "background", 1: "anterior", 2: "posterior"} and model.task.channel_names == ("T1",)
    assert model.provenance.stage == "bundle" and model.network.window == (40, 56, 40)
    assert open_model(bundle=str(root)).source == str(root / "models" / "model.pt")
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit bundle hippocampus's network_def"):
        open_model(str(tmp_path / "other.pt"), str(root))
