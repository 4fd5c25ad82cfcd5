"""The converter scripts in tools/: a clean run, and one error line with exit status 2."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.data.test_convert import _brats_case, _btcv_tree, _labels

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _main(name: str):
    return runpy.run_path(str(TOOLS / f"{name}.py"))["main"]


def test_convert_btcv_script(tmp_path, capsys):
    src = _btcv_tree(tmp_path / "btcv", [1, 35])
    assert _main("convert_btcv")([str(src), str(tmp_path / "out")]) == 0
    assert "2 labeled + 0 unlabeled" in capsys.readouterr().out
    assert _main("convert_btcv")([str(src), str(tmp_path / "out")]) == 2
    assert "already exist; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert _main("convert_btcv")([str(src), str(tmp_path / "out"), "--overwrite"]) == 0


@pytest.mark.parametrize("layout", ["auto", "brats2021"])
def test_convert_brats_script(tmp_path, capsys, layout):
    _brats_case(tmp_path / "src", "brats2021", "BraTS2021_00009", _labels([0, 4]))
    assert _main("convert_brats")([str(tmp_path / "src"), str(tmp_path / "out"), "--layout", layout]) == 0
    assert "1 labeled + 0 unlabeled brats2021 cases, 4 channels" in capsys.readouterr().out
    assert _main("convert_brats")([str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "BraTS folder not found" in capsys.readouterr().err


def test_convert_checkpoint_script_round_trip(tmp_path, capsys):
    import json

    import torch
    from monai.networks.nets import UNETR as MonaiUNETR

    torch.manual_seed(0)
    monai_net = MonaiUNETR(1, 2, 32, feature_size=4, hidden_size=48, mlp_dim=64, num_heads=4, qkv_bias=True)
    torch.save(monai_net.state_dict(), tmp_path / "monai.pt")
    convert = _main("convert_checkpoint")
    assert convert(["from-monai", str(tmp_path / "monai.pt"), str(tmp_path / "model.pt"), "--num-heads", "4"]) == 0
    assert "ROI [32, 32, 32], 2 classes" in capsys.readouterr().out
    assert convert(["to-monai", str(tmp_path / "model.pt"), str(tmp_path / "back.pt")]) == 0
    spec = json.loads((tmp_path / "back.pt.json").read_text())
    assert spec["class"] == "monai.networks.nets.UNETR"
    rebuilt = MonaiUNETR(**spec["kwargs"])
    rebuilt.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)
    assert convert(["to-monai", str(tmp_path / "monai.pt"), str(tmp_path / "x.pt")]) == 2
    assert "not a volmae checkpoint" in capsys.readouterr().err
    assert convert(["from-monai", str(tmp_path / "nope.pt"), str(tmp_path / "y.pt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
