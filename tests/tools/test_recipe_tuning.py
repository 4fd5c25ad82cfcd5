"""tools/experiments/recipe_tuning.py: the grid it runs and the case lists it trains and validates on, which never
touch the held-out fold (no training here)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.conftest import make_msd_folder
from volmae.data.datalist import dataset_folds, load_datalist
from volmae.errors import DataError

TOOL = runpy.run_path(str(Path(__file__).resolve().parents[2] / "tools" / "experiments" / "recipe_tuning.py"))


def test_grid_values_take_the_config_fields_types_and_scratch_runs_once():
    grid = TOOL["parse_grid"](["pretrained=none,runs/s3d/model.pt", "pretrained_lr_scale=1.0,0.3", "beta2=0.98"])
    assert grid == {"pretrained": [None, "runs/s3d/model.pt"], "pretrained_lr_scale": [1.0, 0.3], "beta2": [0.98]}
    combos = TOOL["combinations"](grid)
    assert combos[0] == {"pretrained": None, "beta2": 0.98} and len(combos) == 3
    assert TOOL["parse_grid"](["tokenizer=patch,conv", "steps=400"]) == {"tokenizer": ["patch", "conv"], "steps": [400]}
    with pytest.raises(SystemExit, match="nearest: .*'beta2'"):
        TOOL["parse_grid"](["beta=0.98"])


def test_validation_folds_lie_inside_the_training_side(tmp_path):
    root = make_msd_folder(tmp_path / "task", n=10)
    datalist = load_datalist(root)
    held_out = set(dataset_folds(datalist)[0])
    runs = TOOL["splits"](datalist, 0, [1, 2], 0.5, 0, 20)
    assert [name for name, _, _ in runs] == ["val-fold-1", "val-fold-2"]
    for (_, train, val), k in zip(runs, (1, 2)):
        train_ids, val_ids = {it["case"] for it in train}, {it["case"] for it in val}
        assert val_ids == set(dataset_folds(datalist)[k]) and not train_ids & val_ids
        assert not (train_ids | val_ids) & held_out
    ((_, train, val),) = TOOL["splits"](datalist, 0, None, 0.5, 0, 20)
    assert not {it["case"] for it in train + val} & held_out and len(train) == 4
    with pytest.raises(DataError, match="is the held-out fold 0"):
        TOOL["splits"](datalist, 0, [0, 1], 0.5, 0, 20)
