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
