"""The README's demo command: data discovery, the offline/no-data message, and a smoke run of the whole demo."""

import json
import subprocess
import sys

import pytest

from tests.test_end_to_end import small_task
from volmae.artifact.model import ModelArtifact
from volmae.demo import DemoConfig, find_hippocampus, run_demo
from volmae.errors import ConfigError, DataError


def test_no_data_offline_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLMAE_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(DataError, match="pass --dataset_dir"):
        find_hippocampus(None, str(tmp_path / "cache"), download=False)


def test_failed_download_says_what_to_pass(tmp_path, monkeypatch):
    import monai.apps

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setenv("VOLMAE_DATA", str(tmp_path / "nothing-here"))
    monkeypatch.setattr(monai.apps, "download_and_extract", no_network)
    with pytest.raises(DataError, match="download of Task04_Hippocampus failed .*name resolution.*--dataset_dir"):
        find_hippocampus(None, str(tmp_path / "cache"), download=True)


def test_dataset_dir_without_dataset_json(tmp_path):
    with pytest.raises(DataError, match="no dataset.json there"):
        find_hippocampus(str(tmp_path), str(tmp_path / "cache"), download=False)


def test_console_script_exit_code(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "volmae.cli.demo", "--dataset-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "volmae-demo: error:" in res.stderr and "Traceback" not in res.stderr


def _shrunk(recipe: dict) -> dict:
    """A recipe with its networks, methods and rates kept, at the smoke recipe's size and length."""
    tiny = dict(roi_size=(24, 32, 24), epochs=1, steps=None, batch_size=4, num_samples=1)
    return {"title": recipe["title"], "pretrain": {**recipe["pretrain"], **tiny},
            "finetune": {**recipe["finetune"], **tiny, "feature_size": 8} if "vit" in recipe["finetune"]["preset"]
            else {**recipe["finetune"], **tiny}}  # fmt: skip


@pytest.mark.realdata
@pytest.mark.parametrize("recipe", ["smoke", "vit"])
def test_recipe_writes_the_report(recipe, msd_hippocampus, tmp_path, monkeypatch):
    import volmae.demo as demo

    if recipe != "smoke":
        monkeypatch.setitem(demo.RECIPES, recipe, _shrunk(demo.RECIPES[recipe]))
    task = small_task(msd_hippocampus, tmp_path / "task", n_train=4, n_val=2)
    out = tmp_path / "report"
    cfg = DemoConfig(dataset_dir=str(task), out_dir=str(out), recipe=recipe, device="cpu", quiet=True)
    summary = run_demo(cfg)
    assert summary["held_out_cases"] == 2 and summary["train_cases"] == 4
    assert 0.0 <= summary["mean_dice"] <= 1.0
    for name in ("report.md", "metrics.csv", "summary.json", "demo_config.yaml"):
        assert (out / name).is_file(), name
    pictures = sorted(p.name for p in (out / "pictures").iterdir())
    assert any(p.startswith("reconstruction_") for p in pictures) and any(p.startswith("overlay_") for p in pictures)
    assert json.loads((out / "summary.json").read_text())["num_cases"] == 2
    family = {"smoke": ("s3d", "resenc"), "vit": ("mae", "unetr")}[recipe]
    kinds = tuple(ModelArtifact.load(out / stage / "model.pt").kind for stage in ("pretrain", "finetune"))
    assert kinds == family
    assert demo.RECIPES[recipe]["title"] in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):  # a second run must not clobber the first
        run_demo(cfg)


def test_the_default_recipe_is_the_cnn_and_an_unknown_one_is_named(tmp_path):
    assert DemoConfig().recipe == "cnn"
    with pytest.raises(ConfigError, match="recipe='cpu': choose one of cnn, vit, smoke, full"):
        run_demo(DemoConfig(recipe="cpu", out_dir=str(tmp_path)))


def test_bf16_follows_the_cpu_unless_asked(monkeypatch):
    import volmae.demo as demo

    monkeypatch.setattr(demo, "cpu_has_bf16_units", lambda: True)
    assert demo._cpu_bf16(DemoConfig(device="cpu")) is True
    assert demo._cpu_bf16(DemoConfig(device="cpu", cpu_bf16=False)) is False
    monkeypatch.setattr(demo, "cpu_has_bf16_units", lambda: False)
    assert demo._cpu_bf16(DemoConfig(device="cpu")) is False
