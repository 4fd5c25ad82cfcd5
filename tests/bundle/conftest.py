"""Bundle test helpers: a private copy of a shipped bundle (so runs never write into the repository) and a
``ConfigWorkflow`` runner with overrides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "volmae" / "bundles"


def copy_bundle(name: str, dest: Path, models: bool = False) -> Path:
    """``bundles/<name>`` copied to ``dest/<name>`` with its top-level links, without runs / predictions and, unless
    ``models`` (the released weights the bundle ships), without models."""
    out = dest / name
    skip = ("runs", "predictions") if models else ("models", "runs", "predictions")
    shutil.copytree(BUNDLES / name, out, symlinks=True, ignore=shutil.ignore_patterns(*skip))
    return out


def run_workflow(config_file, workflow_type: str = "train", **override) -> ConfigWorkflow:
    """Initialise and run a bundle config the way ``python -m monai.bundle run`` does."""
    wf = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, **override)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def items(dataset_dir: Path) -> list[dict]:
    from volmae.data import load_msd_datalist

    return [{"image": it["image"], "label": it["label"]} for it in load_msd_datalist(dataset_dir).items]


@pytest.fixture
def bundle_dir(tmp_path):
    """``bundle_dir("hippocampus")`` -> a fresh copy of that bundle under ``tmp_path``."""
    return lambda name: copy_bundle(name, tmp_path / "bundles")


def edit_bundle(root: Path, configs=("train.json", "inference.json"), **values) -> None:
    """Set top-level / ``#``-id values in a bundle copy's configs, as a user adapting the bundle would."""
    import json

    for name in configs:
        path = root / "configs" / name
        cfg = json.loads(path.read_text())
        for key, value in values.items():
            *parents, leaf = key.split("#")
            node = cfg
            for p in parents:
                node = node[int(p) if isinstance(node, list) else p]
            node[leaf] = value
        path.write_text(json.dumps(cfg, indent=4))
