"""A MONAI bundle's trained network as a :class:`~volmae.artifact.model.ModelArtifact`: find the bundle (by name or
folder), read its network config, preprocessing, channels and labels from ``configs/inference.json`` and its weights
from ``models/model.pt`` (or another file), so that ``volmae-infer --bundle`` and ``volmae-evaluate --bundle``
treat a bundle exactly like a model file.

A bundle's ``models/model.pt`` is the plain state dict of its ``network_def`` (what the MONAI model zoo and its
tools expect). Also read: MONAI ``CheckpointSaver`` files (``{"model": state dict}``, what earlier volmae bundles
wrote) and volmae model files whose weights fit the bundle's network.

Bundles ship inside the package (``volmae/bundles/<name>``); ``$VOLMAE_BUNDLES`` (``os.pathsep``-separated folders)
is searched first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from volmae.artifact.model import ModelArtifact, Provenance, Task, is_model_file, read_file
from volmae.errors import CheckpointError, ConfigError
from volmae.networks.registry import NetworkConfig, build_network
from volmae.networks.weights import state_mismatch, unwrapped_state

__all__ = [
    "DEFAULT_BUNDLE",
    "BUNDLES_DIR",
    "bundle_search_path",
    "find_bundle",
    "installed_bundles",
    "bundle_classes",
    "bundle_weights_path",
    "bundle_network",
    "from_bundle",
    "bundle_model",
    "open_model",
    "model_classes",
]

DEFAULT_BUNDLE = "btcv"
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"  # volmae/bundles, installed with the package
REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "configs/train.json")


def bundle_search_path() -> list[Path]:
    """Folders searched for bundles given by name: ``$VOLMAE_BUNDLES``, then the bundles installed with volmae."""
    env = [Path(p).expanduser() for p in os.environ.get("VOLMAE_BUNDLES", "").split(os.pathsep) if p]
    return [*env, BUNDLES_DIR]


def _missing(p: Path) -> list[str]:
    return [f for f in REQUIRED_FILES if not (p / f).is_file()]


def installed_bundles() -> list[str]:
    """Names of the bundles found on :func:`bundle_search_path`."""
    return sorted({d.name for f in bundle_search_path() if f.is_dir() for d in f.iterdir() if not _missing(d)})


def find_bundle(bundle: str | os.PathLike) -> Path:
    """A bundle folder from a path or a name (``btcv``, ``brats``, ``hippocampus`` or one under the search path);
    a folder missing one of the bundle's files is named with the file."""
    p = Path(bundle).expanduser()
    if p.is_dir():
        missing = _missing(p)
        if missing:
            raise ConfigError(f"{p}: not a volmae MONAI bundle (missing {', '.join(missing)})")
        return p.resolve()
    for folder in bundle_search_path():
        if (folder / str(bundle)).is_dir():
            return find_bundle(folder / str(bundle))
    raise ConfigError(
        f"bundle {str(bundle)!r} not found (looked in {', '.join(str(f) for f in bundle_search_path())}); "
        f"known: {', '.join(installed_bundles()) or 'none'}; or pass a bundle folder"
    )


def _raw_config(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "configs" / "inference.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{root / 'configs' / 'inference.json'}: unreadable ({e})") from None


def bundle_classes(bundle: str | os.PathLike) -> dict[int, str]:
    """Label value -> name of the label map the bundle writes (its ``labels``; nothing is built)."""
    root = find_bundle(bundle)
    labels = _raw_config(root).get("labels")
    if not isinstance(labels, dict):
        raise ConfigError(f"{root}: configs/inference.json has no 'labels' table")
    return {int(k): str(v) for k, v in labels.items()}


def bundle_weights_path(root: str | os.PathLike) -> Path:
    """``<bundle>/models/model.pt``."""
    return Path(root) / "models" / "model.pt"


def bundle_network(bundle: str | os.PathLike) -> NetworkConfig:
    """The bundle's network config (``network_config`` of ``configs/inference.json``)."""
    return _parsed(find_bundle(bundle))[0]


def _parsed(root: Path) -> tuple[NetworkConfig, Any, dict, tuple[str, ...], Any]:
    """``(network_config, prep, labels, channel_names, regions)`` of the bundle's ``configs/inference.json``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(root / "configs" / "inference.json")
    parser["bundle_root"] = str(root)
    try:
        network = parser.get_parsed_content("network_config")
        prep = parser.get_parsed_content("prep")
    except Exception as e:  # noqa: BLE001 - MONAI wraps config errors in RuntimeError / ValueError
        raise ConfigError(f"{root}: cannot read the bundle's network_config / prep ({e})") from None
    if not isinstance(network, NetworkConfig):
        raise ConfigError(f"{root}: network_config is not a volmae NetworkConfig ({type(network).__name__})")
    channels = tuple(parser.get("channel_names") or ())
    return network, prep, parser.get("labels") or {}, channels, parser.get("regions")


def _bundle_state(path: Path, network: NetworkConfig, name: str) -> dict[str, torch.Tensor]:
    """The weights in ``path`` for the bundle's network: a plain state dict, a CheckpointSaver file or a volmae
    model file; checked against the network's keys and shapes (built on the meta device where it can be: no memory,
    no time)."""
    data = read_file(path)
    if is_model_file(data):
        state = ModelArtifact.from_dict(data, str(path)).weights
    else:
        state = unwrapped_state(data)
        if not state or len(state) != len(data.get("model", data)):
            raise CheckpointError(f"{path}: not a state dict of bundle {name}'s network_def")
    try:
        with torch.device("meta"):
            net = build_network(network)
    except (NotImplementedError, RuntimeError):  # a network whose construction computes on its tensors
        net = build_network(network)
    why = state_mismatch(net, state)
    if why:
        raise CheckpointError(
            f"{path}: does not fit bundle {name}'s network_def ({why}); a volmae model file describes its own "
            "network: use it without --bundle"
        )
    return state


def bundle_model(
    root: str | os.PathLike,
    network: NetworkConfig,
    prep: Any,
    labels: dict,
    channel_names: tuple[str, ...] | list[str] = (),
    regions: dict | None = None,
    weights: str | os.PathLike | None = None,
) -> ModelArtifact:
    """The bundle at ``root`` as a model artifact, from the network config, preprocessing and labels its config gives
    (the running workflow's, overlays included) and ``weights`` (default ``models/model.pt``)."""
    root = Path(root)
    path = Path(weights).expanduser() if weights else bundle_weights_path(root)
    if not path.is_file():
        if weights:
            raise CheckpointError(f"{path}: model file not found")
        raise CheckpointError(
            f"{path}: no trained weights in the bundle; train it first (python -m monai.bundle run training "
            f"--config_file {root / 'configs' / 'train.json'} --dataset_dir ...) or put a model there "
            f"(volmae-model to-bundle MODEL {root})"
        )
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    names = tuple(channel_names) if len(channel_names) == network.in_channels else ()
    task = Task(prep, network.in_channels, labels, names, regions, root.name)
    provenance = Provenance(
        stage="bundle",
        volmae_version=str(meta.get("required_packages_version", {}).get("volmae", "")),
        dataset=str(meta.get("data_source", "")),
        citation=tuple(meta.get("references", [])),
        settings={"bundle": str(root), "bundle_version": meta.get("version", "")},
    )
    return ModelArtifact(network, task, _bundle_state(path, network, root.name), provenance, str(path))


def from_bundle(bundle: str | os.PathLike, weights: str | os.PathLike | None = None) -> ModelArtifact:
    """The bundle's network (as ``configs/inference.json`` describes it) with ``weights`` (default
    ``models/model.pt``) as a model artifact."""
    root = find_bundle(bundle)
    network, prep, labels, channels, regions = _parsed(root)
    return bundle_model(root, network, prep, labels, channels, regions, weights)


def open_model(model: str | os.PathLike | None = None, bundle: str | os.PathLike | None = None) -> ModelArtifact:
    """The segmentation model that ``--model`` / ``--bundle`` name, the one place the two meet: a model file
    alone; a bundle alone (its ``models/model.pt``); a bundle with ``model`` (that file's weights in the bundle's
    network: a plain state dict, e.g. from the bundle's own training); neither: the default bundle."""
    if bundle:
        return from_bundle(bundle, model).expect("segmentation")
    if model:
        return ModelArtifact.load(model, role="segmentation")
    return from_bundle(DEFAULT_BUNDLE).expect("segmentation")


def model_classes(model: str | os.PathLike | None = None, bundle: str | os.PathLike | None = None) -> dict[int, str]:
    """The label map's classes for ``--list-classes`` (a bundle's are read from its config, nothing is built)."""
    if bundle or not model:
        return bundle_classes(bundle or DEFAULT_BUNDLE)
    return dict(ModelArtifact.load(model, role="segmentation").task.labels)
