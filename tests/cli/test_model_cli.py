"""volmae-model: describe, convert, move into a bundle, and MONAI UNETR / ViT round trips; one error line and exit
status 2 for a bad file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from monai.networks.nets import UNETR as MonaiUNETR

from tests.cli.conftest import assert_clean_error
from volmae.artifact import FORMAT, ModelArtifact
from volmae.cli.model import main

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1_0"


def test_info_describes_a_model(capsys):
    assert main(["info", str(LEGACY / "unetr.pt")]) == 0
    out = capsys.readouterr().out
    assert "unetr (vit, preset vit-tiny), window 16x16x16" in out
    assert "labels: 0 background, 1 anterior, 2 posterior (softmax)" in out
    assert "converted from volmae-checkpoint format 1 (volmae 0.1.0)" in out


def test_convert_rewrites_a_file_of_volmae_0_1_0_in_todays_format(tmp_path, capsys):
    assert main(["convert", str(LEGACY / "nnformer.pt"), str(tmp_path / "model.pt")]) == 0
    assert "nnformer, format 2" in capsys.readouterr().out
    data = torch.load(tmp_path / "model.pt", weights_only=True)
    assert (data["format"], data["version"]) == (FORMAT, 2)
    old, new = ModelArtifact.load(LEGACY / "nnformer.pt"), ModelArtifact.load(tmp_path / "model.pt")
    assert new.network == old.network and new.task == old.task
    assert all(torch.equal(new.weights[k], v) for k, v in old.weights.items())
    copy = tmp_path / "same.pt"
    shutil.copy(LEGACY / "unetr.pt", copy)
    assert main(["convert", str(copy), str(copy)]) == 2  # never in place
    assert_clean_error(2, capsys.readouterr().err, "volmae-model", "write the converted file elsewhere")


def test_monai_unetr_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    monai_net = MonaiUNETR(1, 2, 32, feature_size=4, hidden_size=48, mlp_dim=64, num_heads=4, qkv_bias=True)
    torch.save(monai_net.state_dict(), tmp_path / "monai.pt")
    assert main(["import-monai", str(tmp_path / "monai.pt"), str(tmp_path / "model.pt"), "--num-heads", "4"]) == 0
    assert "ROI [32, 32, 32], 2 classes" in capsys.readouterr().out
    assert ModelArtifact.load(tmp_path / "model.pt").provenance.initialised_from == str(tmp_path / "monai.pt")
    assert main(["export-monai", str(tmp_path / "model.pt"), str(tmp_path / "back.pt")]) == 0
    spec = json.loads((tmp_path / "back.pt.json").read_text())
    assert spec["class"] == "monai.networks.nets.UNETR"
    rebuilt = MonaiUNETR(**spec["kwargs"])
    rebuilt.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)


def test_bad_files_are_one_line(tmp_path, capsys):
    assert main(["export-monai", str(tmp_path / "monai_missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert_clean_error(2, capsys.readouterr().err, "volmae-model", "monai_missing.pt: model file not found")
    torch.save({"vit.patch_embedding.position_embeddings": torch.zeros(1)}, tmp_path / "plain.pt")
    assert main(["info", str(tmp_path / "plain.pt")]) == 2
    assert_clean_error(2, capsys.readouterr().err, "volmae-model", "a plain state dict", "volmae-model import-monai")
    assert main(["export-monai", str(LEGACY / "nnformer.pt"), str(tmp_path / "y.pt")]) == 2
    assert_clean_error(2, capsys.readouterr().err, "volmae-model", "MONAI has no such network")
