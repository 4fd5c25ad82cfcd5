"""The model artifact: one typed, versioned file that holds a network, what it was trained for, and how.

Every stage writes it and every stage reads it: pretraining and fine-tuning save their ``model.pt`` as one, the
predictor, ``volmae-evaluate``, ``volmae-infer``, the study and the MONAI converters load one, and a bundle's
weights become one through :func:`volmae.artifact.from_bundle`. Nothing else in volmae builds a model-file dict.

What a file holds (``torch.save`` of plain containers and tensors; read with ``weights_only=True``, so loading a
file runs no code)::

    format      "volmae-model"
    version     2 (FORMAT_VERSION)
    kind        the network kind ("unetr", "nnformer", "dynunet", "mae", "masked-volume", "masked-unetr", ...)
    network     NetworkConfig.to_dict(): the preset and every constructor argument
    task        Task.to_dict(): preprocessing, input channels and their names, labels and their names, and
                whether the outputs are softmax labels or sigmoid regions
    provenance  Provenance.to_dict(): stage, training data and cases, steps, seed, volmae version, what the
                weights started from, citation
    weights     the network's state dict

A training checkpoint (``checkpoint.pt``) is the same dict plus a ``training`` entry (optimizer, schedule position,
random state) that only a resume reads.

Files of volmae 0.1.0 (``format: "volmae-checkpoint"``, version 1: ``config`` / ``task`` / ``model``) load as they
are and convert with ``volmae-model convert OLD NEW``. A plain state dict, a file of a newer volmae, or one of the
wrong kind is refused with one line that names the file and what to do.
"""

from __future__ import annotations

import datetime as _dt
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from volmae.data.regions import check_regions
from volmae.data.transforms import Preprocessing
from volmae.errors import CheckpointError, ConfigError
from volmae.networks.registry import NetworkConfig, build_network
from volmae.networks.weights import load_encoder_weights, load_state_exactly, state_mismatch, unwrapped_state
from volmae.utils.io import atomic_save, plain

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_FORMAT",
    "Task",
    "Provenance",
    "ModelArtifact",
    "read_file",
    "read_weights",
    "is_model_file",
]

FORMAT = "volmae-model"
FORMAT_VERSION = 2
LEGACY_FORMAT = "volmae-checkpoint"  # volmae 0.1.0: format version 1
CONVERT_HINT = "volmae-model convert"


def _volmae_version() -> str:
    from volmae import __version__

    return __version__


def _load_failure(e: Exception) -> str:
    """One line for ``torch.load``'s failure: its weights-only refusal spans many lines and advises
    ``weights_only=False``, which is wrong for a corrupt or untrusted file."""
    if isinstance(e, pickle.UnpicklingError):
        return (
            "UnpicklingError: corrupt, or holds objects other than tensors and containers; "
            "not loaded, as that could run code"
        )
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else 'no details'}"


def read_file(path: str | Path) -> dict:
    """A ``.pt`` file's top-level dict, loaded safely (``weights_only=True``: no code runs), or a
    :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a model file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable PyTorch file ({_load_failure(e)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}; not a model file")
    return dict(obj)


def is_model_file(data: Mapping) -> bool:
    """Whether a loaded dict is a volmae model file (this format or volmae 0.1.0's)."""
    return data.get("format") in (FORMAT, LEGACY_FORMAT)


def utc_now() -> str:
    """The time now, as a model file's provenance records it (ISO 8601, UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _int_keys(labels: Mapping) -> dict[int, str]:
    try:
        return {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"labels={dict(labels)!r}: keys must be label values (integers)") from None


@dataclass(frozen=True)
class Task:
    """What a network was trained to do, and everything inference needs besides the network.

    ``labels``: label value -> name of the label map the model writes (``0`` background); empty for a pretraining
    model. ``regions``: for a sigmoid multi-label network (BraTS), the label values each output channel covers, in
    channel order (``None``: one softmax output per label). ``channel_names``: one name per input channel."""

    preprocessing: Preprocessing
    in_channels: int
    labels: dict[int, str] = field(default_factory=dict)
    channel_names: tuple[str, ...] = ()
    regions: dict[str, tuple[int, ...]] | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        if int(self.in_channels) < 1:
            raise ConfigError(f"in_channels={self.in_channels}: must be >= 1")
        object.__setattr__(self, "labels", _int_keys(self.labels))
        object.__setattr__(self, "channel_names", tuple(str(c) for c in self.channel_names))
        if self.channel_names and len(self.channel_names) != self.in_channels:
            raise ConfigError(
                f"channel_names={list(self.channel_names)}: {len(self.channel_names)} names for "
                f"{self.in_channels} input channels"
            )
        if self.labels and 0 not in self.labels:
            raise ConfigError(f"labels={self.labels}: label 0 (background) is missing")
        if self.regions is not None:
            try:
                table = check_regions(self.regions)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            object.__setattr__(self, "regions", {str(k): tuple(v) for k, v in zip(self.regions, table)})
            unknown = sorted({v for r in table for v in r} - set(self.labels)) if self.labels else []
            if unknown:
                raise ConfigError(f"regions={self.regions}: label values {unknown} are not among labels {self.labels}")

    @property
    def output(self) -> str:
        """``"softmax"`` (one channel per label, argmax) or ``"regions"`` (one sigmoid channel per region)."""
        return "regions" if self.regions else "softmax"

    @property
    def out_channels(self) -> int | None:
        """The network outputs this task needs (``None`` for a task without labels: pretraining)."""
        if self.regions:
            return len(self.regions)
        return max(self.labels) + 1 if self.labels else None

    def with_window(self, roi_size: Sequence[int]) -> Task:
        return replace(self, preprocessing=replace(self.preprocessing, roi_size=tuple(int(s) for s in roi_size)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "preprocessing": plain(asdict(self.preprocessing)),
            "in_channels": int(self.in_channels),
            "channel_names": list(self.channel_names),
            "labels": dict(self.labels),
            "regions": None if self.regions is None else {k: list(v) for k, v in self.regions.items()},
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        """A task as :meth:`to_dict` writes it, or as volmae 0.1.0 did (``multilabel``, no channel names)."""
        prep = dict(d["preprocessing"])
        known = {f.name for f in fields(Preprocessing)}
        prep = {k: tuple(v) if isinstance(v, list) else v for k, v in prep.items() if k in known}
        return cls(
            Preprocessing(**prep),
            int(d["in_channels"]),
            dict(d.get("labels") or {}),
            tuple(d.get("channel_names") or ()),
            d.get("regions") or None,
            str(d.get("dataset") or ""),
        )


@dataclass(frozen=True)
class Provenance:
    """Where a model came from. ``stage``: ``pretrain``, ``finetune``, ``bundle`` (a MONAI bundle's weights) or
    ``import`` (converted from another tool). ``initialised_from``: what the weights started from (a pretrained
    model file, or ``scratch``). ``selection``: which epoch's weights these are and on which cases that was
    decided."""

    stage: str = ""
    volmae_version: str = ""
    created: str = ""
    dataset: str = ""
    dataset_dir: str = ""
    fold: int | None = None
    training_cases: tuple[str, ...] = ()
    validation_cases: tuple[str, ...] = ()
    steps: int | None = None
    epochs: int | None = None
    seed: int | None = None
    initialised_from: str = ""
    selection: str = ""
    citation: tuple[str, ...] = ()
    converted_from: str = ""
    settings: dict = field(default_factory=dict)

    @classmethod
    def now(cls, stage: str, **values: Any) -> Provenance:
        """A record for a model made now by this volmae."""
        return cls(stage=stage, volmae_version=_volmae_version(), created=utc_now(), **values)

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        known = {f.name: f for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) and k != "settings" else v) for k, v in d.items() if k in known}
        return cls(**values)

    def summary(self) -> str:
        parts = [f"{self.stage or 'unknown stage'} with volmae {self.volmae_version or '?'}"]
        if self.created:
            parts.append(f"on {self.created}")
        if self.dataset:
            n = len(self.training_cases)
            parts.append(f"from {self.dataset}" + (f" ({n} training cases)" if n else ""))
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.initialised_from:
            parts.append(f"initialised from {self.initialised_from}")
        if self.converted_from:
            parts.append(f"converted from {self.converted_from}")
        return ", ".join(parts)


def _legacy_stage(kind: str) -> str:
    return "finetune" if kind in ("unetr", "nnformer", "dynunet") else "pretrain"


@dataclass
class ModelArtifact:
    """A network (:class:`~volmae.networks.registry.NetworkConfig` + weights), its :class:`Task` and its
    :class:`Provenance`. ``source``: the file it was read from, named in errors (not saved)."""

    network: NetworkConfig
    task: Task
    weights: dict[str, torch.Tensor]
    provenance: Provenance = field(default_factory=Provenance)
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "model"
        if self.network.in_channels != self.task.in_channels:
            raise CheckpointError(
                f"{where}: the network takes {self.network.in_channels} input channels, the task "
                f"{self.task.in_channels}"
            )
        if self.network.role == "segmentation":
            want = self.task.out_channels
            if want is None:
                raise CheckpointError(f"{where}: a segmentation network without labels in its task")
            if self.network.out_channels != want:
                what = f"{len(self.task.regions)} regions" if self.task.regions else f"labels 0..{want - 1}"
                raise CheckpointError(
                    f"{where}: the network has {self.network.out_channels} outputs but its task has {what}"
                )

    # ----------------------------------------------------------------------------------------------- identity
    @property
    def kind(self) -> str:
        return self.network.kind

    @property
    def family(self) -> str:
        return self.network.family

    @property
    def role(self) -> str:
        return self.network.role

    def describe(self) -> str:
        """A few lines for people: what the model is, for what, and where it came from."""
        t, n = self.task, self.network
        lines = [
            f"{self.source or 'model'}: {n.kind} ({n.family}, preset {n.preset or '-'}), window "
            f"{'x'.join(map(str, n.window))}, {sum(v.numel() for v in self.weights.values()):,} weights",
            f"task: {t.dataset or 'unnamed'}; {t.in_channels} input channel(s)"
            + (f" ({', '.join(t.channel_names)})" if t.channel_names else "")
            + f"; preprocessing {t.preprocessing.modality}, spacing {t.preprocessing.pixdim or 'as stored'} mm",
        ]
        if t.labels:
            names = ", ".join(f"{k} {v}" for k, v in sorted(t.labels.items()))
            out = f"sigmoid regions {', '.join(t.regions)}" if t.regions else "softmax"
            lines.append(f"labels: {names} ({out})")
        lines.append(f"made by {self.provenance.summary()}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------------------- network
    def build(self, roi_size: Sequence[int] | None = None) -> torch.nn.Module:
        """The network with these weights, on the CPU, in eval mode. ``roi_size`` rebuilds it for another window:
        a ViT's position embedding is then regenerated (sin-cos) or trilinearly resampled (learnable) by
        :func:`~volmae.networks.weights.load_encoder_weights`; everything else loads unchanged. Accuracy at a
        window the model was not trained with is the caller's to check."""
        where = self.source or "model"
        config = self.network
        regrid = roi_size is not None and tuple(int(s) for s in roi_size) != tuple(self.network.window)
        if regrid:
            config = config.with_window(roi_size)  # type: ignore[arg-type]
        try:
            model = build_network(config)
        except ConfigError as e:
            raise CheckpointError(f"{where}: cannot build its network for roi_size={roi_size} ({e})") from None
        if not (regrid and config.encoder is not None):
            load_state_exactly(model, self.weights, f"{where}: weights do not fit the stored network config ({{why}})")
            return model.eval()
        report = load_encoder_weights(model.encoder, self.weights, self.network.encoder)
        rest = {k: v for k, v in self.weights.items() if not k.startswith("encoder.")}
        missing, unexpected = model.load_state_dict(rest, strict=False)
        bad = [k for k in missing if not k.startswith("encoder.")] + list(unexpected)
        if not report.ok or bad:
            why = state_mismatch(model, self.weights) or report.summary().splitlines()[0]
            raise CheckpointError(f"{where}: weights do not fit the network re-gridded to {roi_size} ({why})")
        return model.eval()

    # ----------------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        """The file's content (see the module docstring)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "network": self.network.to_dict(),
            "task": self.task.to_dict(),
            "provenance": self.provenance.to_dict(),
            "weights": self.weights,
        }

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (a failed write leaves any previous file as it was)."""
        return atomic_save(self.to_dict(), path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model") -> ModelArtifact:
        """A loaded file's dict (this format or volmae 0.1.0's) as an artifact; a :class:`CheckpointError` naming
        ``source`` and what to do for anything else."""
        fmt, version = data.get("format"), data.get("version")
        try:
            if fmt == FORMAT:
                if not isinstance(version, int) or version > FORMAT_VERSION:
                    raise CheckpointError(
                        f"{source}: written by a newer volmae (model format version {version}; this volmae "
                        f"{_volmae_version()} reads up to {FORMAT_VERSION}); upgrade volmae (pip install -U volmae)"
                    )
                return cls(
                    NetworkConfig.from_dict(data["network"]),
                    Task.from_dict(data["task"]),
                    dict(data["weights"]),
                    Provenance.from_dict(data.get("provenance") or {}),
                    source,
                )
            if fmt == LEGACY_FORMAT:
                if version != 1:
                    raise CheckpointError(f"{source}: unknown {LEGACY_FORMAT} version {version!r}")
                kind = str(data.get("kind"))
                run = data.get("run_config") if isinstance(data.get("run_config"), Mapping) else {}
                return cls(
                    NetworkConfig.from_dict(data["config"]),
                    Task.from_dict(data["task"]),
                    dict(data["model"]),
                    Provenance(
                        stage=_legacy_stage(kind),
                        volmae_version="0.1.0",
                        dataset=str(data["task"].get("dataset", "")),
                        dataset_dir=str(run.get("dataset_dir", "")),
                        seed=run.get("seed"),
                        initialised_from=str(run.get("pretrained") or ""),
                        converted_from=f"{LEGACY_FORMAT} format 1 (volmae 0.1.0)",
                        settings=dict(run),
                    ),
                    source,
                )
        except (KeyError, TypeError, ConfigError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise CheckpointError(f"{source}: a damaged volmae model file ({what})") from None
        if fmt is not None:
            raise CheckpointError(f"{source}: format {fmt!r} is not a volmae model file")
        raise CheckpointError(
            f"{source}: a plain state dict (no network config or task), not a volmae model file; use it with the "
            "bundle whose network_def it fits (volmae-infer --bundle NAME --model FILE), as --pretrained for "
            "fine-tuning, or import MONAI UNETR weights with: volmae-model import-monai FILE OUT.pt"
        )

    @classmethod
    def load(cls, path: str | Path, role: str | None = None, family: str | None = None) -> ModelArtifact:
        """Read a model file (see the module docstring); ``role`` (``segmentation`` / ``pretraining``) and
        ``family`` (``vit`` / ``nnformer`` / ``cnn``), when given, must match, or one line says what the file is
        and what it is for."""
        art = cls.from_dict(read_file(path), str(path))
        art.expect(role, family)
        return art

    def expect(self, role: str | None = None, family: str | None = None) -> ModelArtifact:
        """``self`` when it is a ``role`` network of ``family``, else a :class:`CheckpointError` saying what it is."""
        where = self.source or "model"
        if role is not None and self.role != role:
            if role == "segmentation":
                raise CheckpointError(
                    f"{where}: a {self.kind} {self.role} model, not a segmentation model; pass the model.pt written "
                    "by fine-tuning (volmae-train), or give this one to fine-tuning as --pretrained"
                )
            raise CheckpointError(f"{where}: a {self.kind} {self.role} model; this needs a {role} model")
        if family is not None and self.family != family:
            raise CheckpointError(
                f"{where}: holds a {self.family} network ({self.kind}); this needs a {family} one (pick a {family} "
                "preset, or a model of that family)"
            )
        return self

    @classmethod
    def from_network(
        cls, model: torch.nn.Module, network: NetworkConfig, task: Task, provenance: Provenance
    ) -> ModelArtifact:
        """The artifact of a network in memory (its current weights, on the CPU; DDP's wrapper removed)."""
        model = getattr(model, "module", model)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(network, task, weights, provenance)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelArtifact | None]:
    """``(weights, model)`` of a file that starting weights come from: a volmae model file's weights with the model
    itself (its network config says what they are), or a foreign state dict's tensors (under ``model`` /
    ``state_dict`` / ``net``, DDP's ``module.`` removed) with ``None``."""
    data = read_file(path)
    if is_model_file(data):
        model = ModelArtifact.from_dict(data, str(path))
        return model.weights, model
    return unwrapped_state(data), None
