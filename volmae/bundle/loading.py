"""A trained bundle as a segmentation model for ``volmae-infer --bundle``: find it, build its ``network_def``, load
``models/model.pt`` and read its preprocessing, channel count and label names from its configs.

The result has the same form as a fine-tuning checkpoint (``kind`` / ``config`` / ``task`` / ``model``), so the
CLI's predictor treats both alike (re-gridding for another ``--roi-size``, TTA, label-map inversion).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from volmae.errors import CheckpointError, ConfigError
from volmae.networks.weights import model_state, read_checkpoint

__all__ = ["DEFAULT_BUNDLE", "bundle_search_path", "find_bundle", "bundle_classes", "bundle_checkpoint"]

DEFAULT_BUNDLE = "btcv"
_REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def bundle_search_path() -> list[Path]:
    """Folders searched for bundles given by name: ``$VOLMAE_BUNDLES`` (``os.pathsep``-separated), then the
    repository's ``bundles/``."""
    env = [Path(p).expanduser() for p in os.environ.get("VOLMAE_BUNDLES", "").split(os.pathsep) if p]
    return [*env, _REPO_BUNDLES]


def _is_bundle(p: Path) -> bool:
    return (p / "configs" / "inference.json").is_file() and (p / "configs" / "metadata.json").is_file()


def find_bundle(bundle: str | os.PathLike) -> Path:
    """A bundle folder from a path or a name (``btcv``, ``brats``, ``hippocampus`` or one under the search path)."""
    p = Path(bundle).expanduser()
    if p.is_dir():
        if not _is_bundle(p):
            raise ConfigError(f"{p}: not a MONAI bundle (no configs/inference.json and configs/metadata.json)")
        return p.resolve()
    for folder in bundle_search_path():
        if _is_bundle(folder / str(bundle)):
            return (folder / str(bundle)).resolve()
    known = sorted({d.name for f in bundle_search_path() if f.is_dir() for d in f.iterdir() if _is_bundle(d)})
    raise ConfigError(
        f"bundle {str(bundle)!r} not found (looked in {', '.join(str(f) for f in bundle_search_path())}); "
        f"known: {', '.join(known) or 'none'}; or pass a bundle folder"
    )


def _channel_def(root: Path) -> dict[int, str]:
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    return {int(k): str(v) for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items()}


def bundle_classes(bundle: str | os.PathLike) -> dict[int, str]:
    """Label value -> name of the bundle's written label map (``channel_def`` of its ``pred`` output)."""
    return _channel_def(find_bundle(bundle))


def _state_dict(path: Path) -> dict:
    # read_checkpoint: safe load with named errors; model_state: a CheckpointSaver file with several entries keeps
    # the network under "model"
    state = dict(model_state(read_checkpoint(path)))
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of the bundle's network_def")
    return state


def bundle_checkpoint(bundle: str | os.PathLike) -> dict:
    """The trained bundle as ``{"kind", "config", "task", "model"}`` (see the module docstring)."""
    from monai.bundle import ConfigParser

    from volmae.bundle.workflow import model_file

    root = find_bundle(bundle)
    weights = Path(model_file(root))
    parser = ConfigParser()
    parser.read_config(root / "configs" / "inference.json")
    parser["bundle_root"] = str(root)
    try:
        network = parser.get_parsed_content("network_def")
        prep = parser.get_parsed_content("prep")
    except Exception as e:  # noqa: BLE001 - MONAI wraps config errors in RuntimeError / ValueError
        raise ConfigError(f"{root}: cannot build the bundle's network_def / prep ({e})") from None
    config = getattr(network, "volmae_config", None)
    if config is None:
        raise ConfigError(f"{root}: network_def is not a volmae network ({type(network).__name__})")
    regions = parser.get("regions")
    task = {
        "preprocessing": asdict(prep),
        "labels": _channel_def(root),
        "in_channels": int(parser["in_channels"]),
        "multilabel": bool(regions),
        "regions": regions,
        "dataset": root.name,
    }
    state = _state_dict(weights)
    return {"kind": config["kind"], "config": config, "task": task, "model": state, "source": str(weights)}
