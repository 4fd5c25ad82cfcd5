"""A MONAI bundle's trained network as a :class:`~volmae.artifact.model.ModelArtifact`: find the bundle (by name or
folder), read its network config, preprocessing, channels and labels from ``configs/inference.json`` and its weights
from ``models/model.pt`` (or another file), so that ``volmae-infer --bundle`` and ``volmae-evaluate --bundle``
treat a bundle exactly like a model file.

A bundle's ``models/model.pt`` is the plain state dict of its ``network_def`` (what the MONAI model zoo and its
tools expect). Also read: MONAI ``CheckpointSaver`` files (``{"model": state dict}``, what earlier volmae bundles
wrote) and volmae model files whose weights fit the bundle's network.

Bundles ship inside the package (``volmae/bundles/<name>``); ``$VOLMAE_BUNDLES`` (``os.pathsep``-separated folders)
is searched first. A bundle's weights are its folder's ``models/model.pt``, else the copy volmae fetched or installed
under ``$VOLMAE_HOME`` (:mod:`volmae.artifact.hub`, the weights registry: released weights are downloaded on first
use). No bundle is used unless named: :func:`open_model` with neither a model nor a bundle answers which models exist
and how to get one.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import torch

from volmae.artifact import hub
from volmae.artifact.model import ModelArtifact, Provenance, Task, is_model_file, read_file
from volmae.errors import CheckpointError, ConfigError
from volmae.networks.registry import NetworkConfig, build_network
from volmae.networks.weights import state_mismatch, unwrapped_state

__all__ = [
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
    "list_models",
    "no_model_message",
    "download_weights",
    "install_weights",
]

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
    known = installed_bundles()
    near = difflib.get_close_matches(str(bundle), known, n=1, cutoff=0.5)
    raise ConfigError(
        f"bundle {str(bundle)!r} not found (looked in {', '.join(str(f) for f in bundle_search_path())}); "
        + (f"did you mean {near[0]!r}? " if near else "")
        + f"known: {', '.join(known) or 'none'}; or pass a bundle folder"
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
    """``<bundle>/models/model.pt``, where a training run or ``volmae-model to-bundle`` writes the weights (reading
    also looks under ``$VOLMAE_HOME``: :func:`volmae.artifact.hub.installed_weights`)."""
    return Path(root) / hub.WEIGHTS_FILE


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


def _skeleton(network: NetworkConfig) -> torch.nn.Module:
    """The network for key and shape checks, built on the meta device where it can be (no memory, no time)."""
    try:
        with torch.device("meta"):
            return build_network(network)
    except (NotImplementedError, RuntimeError):  # a network whose construction computes on its tensors
        return build_network(network)


def _bundle_state(path: Path, network: NetworkConfig, name: str) -> dict[str, torch.Tensor]:
    """The weights in ``path`` for the bundle's network: a plain state dict, a CheckpointSaver file or a volmae
    model file; checked against the network's keys and shapes. Float tensors stored narrower (a release packed in
    bf16) are widened to float32: the network computes as if trained so."""
    data = read_file(path)
    if is_model_file(data):
        state = ModelArtifact.from_dict(data, str(path)).weights
    else:
        state = unwrapped_state(data)
        if not state or len(state) != len(data.get("model", data)):
            raise CheckpointError(f"{path}: not a state dict of bundle {name}'s network_def")
    why = state_mismatch(_skeleton(network), state)
    if why:
        raise CheckpointError(
            f"{path}: does not fit bundle {name}'s network_def ({why}); a volmae model file describes its own "
            "network: use it without --bundle"
        )
    return {k: v.float() if v.is_floating_point() and v.dtype != torch.float64 else v for k, v in state.items()}


def _provenance(root: Path, weights: Path) -> Provenance:
    """Where the bundle's weights came from: the release record beside them (``models/release.json``, written by
    ``volmae-release``) when there is one, else the bundle's metadata."""
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    settings = {"bundle": str(root), "bundle_version": meta.get("version", "")}
    record = weights.parent / "release.json"
    if record.is_file():
        try:
            rel = json.loads(record.read_text())
            return Provenance(
                stage="bundle",
                volmae_version=str(rel["volmae_version"]),
                created=str(rel["date"]),
                dataset=str(rel["data"]["source"]),
                fold=rel["data"]["fold_held_out"],
                steps=rel["recipe"]["finetune"].get("steps"),
                seed=rel["recipe"]["finetune"].get("seed"),
                initialised_from=f"S3D/MAE pretraining ({rel['recipe']['title']})",
                citation=tuple(rel.get("citation", ())),
                settings={**settings, "release": rel["recipe"]["name"], "held_out": rel["held_out"]},
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable record says nothing: fall back to the metadata
    return Provenance(
        stage="bundle",
        volmae_version=str(meta.get("required_packages_version", {}).get("volmae", "")),
        dataset=str(meta.get("data_source", "")),
        citation=tuple(meta.get("references", [])),
        settings=settings,
    )


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
    path = Path(weights).expanduser() if weights else hub.installed_weights(root) or bundle_weights_path(root)
    if not path.is_file():
        if weights:
            raise CheckpointError(f"{path}: model file not found")
        entry = hub.registry_entry(root)
        if entry is not None:
            raise CheckpointError(
                f"{path}: the released weights of bundle {root.name} are not installed; fetch them: volmae-download "
                f"{root.name} (or python -m monai.bundle download_large_files --bundle_path {root}); "
                + hub.offline_hint(root, entry)
            )
        raise CheckpointError(
            f"{path}: no trained weights in the bundle; train it first ({hub.training_command(root)}), put a model "
            f"there (volmae-model to-bundle MODEL {root}) or install a weights file (volmae-download {root.name} "
            f"--from-file FILE); no weights are released for bundle {root.name}"
        )
    names = tuple(channel_names) if len(channel_names) == network.in_channels else ()
    task = Task(prep, network.in_channels, labels, names, regions, root.name)
    state = _bundle_state(path, network, root.name)
    return ModelArtifact(network, task, state, _provenance(root, path), str(path))


def from_bundle(bundle: str | os.PathLike, weights: str | os.PathLike | None = None) -> ModelArtifact:
    """The bundle's network (as ``configs/inference.json`` describes it) with ``weights`` (default
    ``models/model.pt``) as a model artifact."""
    root = find_bundle(bundle)
    network, prep, labels, channels, regions = _parsed(root)
    return bundle_model(root, network, prep, labels, channels, regions, weights)


def open_model(model: str | os.PathLike | None = None, bundle: str | os.PathLike | None = None) -> ModelArtifact:
    """The segmentation model that ``--model`` / ``--bundle`` name, the one place the two meet: a model file
    alone; a bundle alone (its weights; released ones are downloaded on first use by
    :func:`volmae.artifact.hub.ensure_weights`); a bundle with ``model`` (that file's weights in the bundle's
    network: a plain state dict, e.g. from the bundle's own training); neither: a :class:`ConfigError` saying which
    models there are (:func:`no_model_message`)."""
    if bundle:
        root = find_bundle(bundle)
        if not model:
            hub.ensure_weights(root)
        return from_bundle(root, model).expect("segmentation")
    if model:
        return ModelArtifact.load(model, role="segmentation")
    raise ConfigError(no_model_message())


def model_classes(model: str | os.PathLike | None = None, bundle: str | os.PathLike | None = None) -> dict[int, str]:
    """The label map's classes for ``--list-classes`` (a bundle's are read from its config, nothing is built or
    downloaded)."""
    if bundle:
        return bundle_classes(bundle)
    if model:
        return dict(ModelArtifact.load(model, role="segmentation").task.labels)
    raise ConfigError(no_model_message())


def list_models() -> list[hub.ModelInfo]:
    """Every bundle on the search path with its weights' status (installed, downloadable, not released), task,
    licence and size."""
    out = []
    for name in installed_bundles():
        root = find_bundle(name)
        try:
            out.append(hub.model_info(root))
        except ConfigError as e:  # a broken registry entry: listed, with the problem
            out.append(hub.ModelInfo(name, "", f"registry error: {e}", "", None, None, None, root))
    return out


def no_model_message() -> str:
    """One line for a run that names no model: which models are installed (pass ``--bundle NAME``), which download on
    first use, which have no released weights (and how to train them), and how to list them."""
    models = list_models()
    installed = [m for m in models if m.status == "installed"]
    fetch = [m for m in models if m.status == "downloadable"]
    other = [m for m in models if m.status == "not released"]
    parts = []
    if installed:
        parts.append(
            "pass --bundle "
            + " or --bundle ".join(f"{m.name} (installed: {m.task})" if m.task else m.name for m in installed)
        )
    if fetch:
        parts.append(
            ("or " if installed else "pass ")
            + " or ".join(f"--bundle {m.name} (downloads {hub.human_size(m.size)} on first use)" for m in fetch)
        )
    parts.append(("or " if parts else "pass ") + "--model FILE (a model.pt from volmae-train)")
    text = "no model named: " + ", ".join(parts)
    if other:
        parents = {m.root.parent for m in other}
        where = f"{parents.pop()}/<name>" if len(parents) == 1 else "<bundle>"
        text += (
            f"; {', '.join(m.name for m in other)}: no released weights (train: python -m monai.bundle run training "
            f"--config_file {where}/configs/train.json --dataset_dir ...)"
        )
    return text + "; list: volmae-download --list"


def download_weights(bundle: str | os.PathLike, progress: bool | None = None) -> Path:
    """Fetch the released weights of ``bundle`` (a name or a folder): :func:`volmae.artifact.hub.download`."""
    return hub.download(find_bundle(bundle), progress=progress)


def install_weights(bundle: str | os.PathLike, file: str | os.PathLike) -> Path:
    """Install ``file`` (a ``.pt`` or a ``.zip`` holding ``models/model.pt``) as the weights of ``bundle``: checked
    against the registry's sha256, or, for a bundle without released weights, against its network's keys and
    shapes (:func:`volmae.artifact.hub.install_from_file`)."""
    root = find_bundle(bundle)

    def fits(path: Path) -> None:
        _bundle_state(path, _parsed(root)[0], root.name)

    return hub.install_from_file(root, file, check=fits)


def check_fits_bundle(model: ModelArtifact, bundle: str | os.PathLike, what: str = "the model") -> None:
    """Refuse ``model`` for ``bundle`` unless it is the bundle's network_def (preset, window, channels, classes),
    naming both."""
    root = find_bundle(bundle)
    network = bundle_network(root)
    if model.network.to_dict() != network.to_dict():
        raise ConfigError(
            f"{what}: a {model.kind} of preset {model.network.preset} at {list(model.network.window)}, but bundle "
            f"{root.name}'s network_def is a {network.kind} of preset {network.preset} at {list(network.window)}; "
            "train with the bundle's preset, ROI and labels, or use the model file itself (volmae-infer --model)"
        )


def write_bundle_weights(weights: dict[str, torch.Tensor], bundle: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``weights`` as ``bundle``'s ``models/model.pt``: the plain state dict of its ``network_def``, as the
    bundle's own training writes it and MONAI's tools load it; checked against the network's keys and shapes first
    (a float tensor may be stored in a narrower float type: it is widened when loaded)."""
    from volmae.utils.io import atomic_save

    root = find_bundle(bundle)
    why = state_mismatch(_skeleton(_parsed(root)[0]), weights)
    if why:
        raise CheckpointError(f"these weights do not fit bundle {root.name}'s network_def ({why})")
    dst = bundle_weights_path(root)
    if dst.exists() and not overwrite:
        raise ConfigError(f"{dst} exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(weights, dst)
    return dst
