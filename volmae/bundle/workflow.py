"""What the bundle configs (``volmae/bundles/<task>/configs/*.json``) call: thin adapters from MONAI's bundle
workflow to volmae's Python API, never a second implementation of a stage.

- ``train#trainer`` is a :class:`Trainer`: :func:`volmae.engine.finetune` (volmae's loss, schedule, validation
  and model selection) on the bundle's case lists, then ``models/model.pt`` as the plain state dict of
  ``network_def`` (what the MONAI model zoo's tools load).
- ``evaluating`` is :func:`volmae.evaluation.evaluate` of the bundle's model on the held-out fold.
- ``inference``'s ``evaluator`` is an :class:`Inference`: :func:`volmae.inference.infer` with the bundle's model,
  its sliding-window settings read from the config's ``inferer``.
- ``bundle_model`` is a :class:`BundleModel`: the trained network as the running config describes it (so an
  overlay such as ``nnformer.json`` changes it too), read from ``models/model.pt`` when a run needs it.
- ``pretraining`` is :func:`volmae.engine.pretrain`.

MONAI's workflow contract asks for ids such as ``train#dataset``, ``train#inferer`` and ``dataset``; they are the
cases and settings these adapters pass on, so overriding them (as MONAI Label does with its own case lists) changes
what volmae runs. Nothing here reads data when the config is parsed: a bundle checks and lists without a dataset
(``dataset_dir`` empty: the lists are empty, and running says what to give).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from volmae.artifact.bundles import bundle_model
from volmae.artifact.model import ModelArtifact
from volmae.data.datalist import Datalist, load_msd_datalist, pretraining_items, split_fold
from volmae.engine.finetune import Cases, FinetuneConfig, FinetuneResult, finetune, fold_cases
from volmae.errors import ConfigError
from volmae.evaluation.evaluate import EvaluateConfig, EvaluationReport
from volmae.evaluation.evaluate import evaluate as _evaluate
from volmae.inference.infer import InferConfig, InferredCase, collect_inputs, infer
from volmae.networks.registry import NetworkConfig
from volmae.utils.io import atomic_save

__all__ = [
    "bundle_root",
    "fold_items",
    "unlabeled_items",
    "input_items",
    "Trainer",
    "Inference",
    "BundleModel",
    "evaluate",
]


def bundle_root(default: str | os.PathLike | None = None) -> str:
    """The folder of the bundle whose config is being run, as an absolute path.

    MONAI configs have no "directory of this file" variable, and MONAI zoo bundles assume the current directory is the
    bundle. Here the running ``ConfigWorkflow`` (``python -m monai.bundle run``, MONAI Label, tests) is found on the
    call stack and its ``config_root_path`` used: ``<bundle>/configs/train.json`` -> ``<bundle>``, and the top-level
    ``<bundle>/train.json`` -> ``<bundle>``. Outside a workflow, ``default`` (else an error saying to set
    ``bundle_root``).
    """
    from monai.bundle import ConfigWorkflow

    for frame in inspect.stack(context=0):
        wf = frame.frame.f_locals.get("self")
        if isinstance(wf, ConfigWorkflow):
            root = Path(wf.config_root_path)
            return str((root.parent if root.name == "configs" else root).resolve())
    if default is None:
        raise ConfigError("bundle_root: not run through a MONAI ConfigWorkflow; pass --bundle_root <bundle folder>")
    return str(Path(default).resolve())


def fold_items(
    dataset_dir: str | os.PathLike | None,
    fold: int = 0,
    part: str = "train",
    fraction: float = 1.0,
    fraction_seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
) -> list[dict]:
    """``[{"image", "label", "case"}]`` of one part of an MSD task folder: ``train`` (the training side of ``fold``,
    its label ``fraction``, less the validation cases), ``val`` (``val_fraction`` of those training cases, for
    validation and model selection) or ``test`` (the held-out fold: evaluation only). The same cases as
    ``volmae-train`` with the same settings (:func:`volmae.engine.finetune.fold_cases`). ``dataset_dir`` not set:
    no cases (the trainer then says what to give). ``limit``: the first N."""
    if part not in ("train", "val", "test"):
        raise ConfigError(f"part={part!r}: expected 'train', 'val' or 'test'")
    if not dataset_dir:
        return []
    datalist = load_msd_datalist(dataset_dir)
    if part == "test":
        items = split_fold(datalist, int(fold))[1]
    else:
        train, val = fold_cases(datalist, int(fold), float(fraction), int(fraction_seed), float(val_fraction))
        items = train if part == "train" else val
    items = items[:limit] if limit else items
    return [{"image": it["image"], "label": it["label"], "case": it["case"]} for it in items]


def unlabeled_items(dataset_dir: str | os.PathLike, fold: int | None = 0, limit: int | None = None) -> list[dict]:
    """Images for MAE pretraining: every image of the task (labels ignored) except the fold's held-out cases, plus
    the unlabeled ``test`` images; ``fold=None`` uses all training images."""
    fold = None if fold is None else int(fold)
    out = [{"image": it["image"]} for it in pretraining_items(load_msd_datalist(dataset_dir), fold)]
    return out[:limit] if limit else out


def input_items(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | None, default_folder: str | os.PathLike | None = None
) -> list[dict]:
    """``[{"image": ...}]`` for bundle inference: NIfTI files, DICOM series folders, or folders of either (the same
    rules as ``volmae-infer``). Without ``inputs``, the scans in ``default_folder`` (a task's ``imagesTs``) when
    it exists, else none (running then asks for ``--input``)."""
    if not inputs:
        if not default_folder or not Path(default_folder).is_dir():
            return []
        inputs = default_folder
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return [{"image": path} for _, path in collect_inputs(paths)]


def _datalist(labels: Mapping, channel_names: Sequence[str], regions: Mapping | None, name: str) -> Datalist:
    return Datalist(
        [],
        {int(k): str(v) for k, v in labels.items()},
        {i: str(c) for i, c in enumerate(channel_names)},
        name,
        regions={str(k): [int(v) for v in vs] for k, vs in (regions or {}).items()},
    )


class Trainer:
    """``train#trainer``: volmae's fine-tuning engine on the bundle's cases (see the module docstring).

    Args:
        config: the run's :class:`~volmae.engine.finetune.FinetuneConfig` (the bundle's settings).
        train_dataset / val_dataset: MONAI datasets whose ``data`` are the training and validation cases
            (``train#dataset#data`` / ``validate#dataset#data``, the ids MONAI Label overrides).
        labels / channel_names / regions / name: what the labels mean (the bundle's task), so that case lists
            without a ``dataset.json`` train the same network.
        max_epochs: ``train#trainer#max_epochs`` (MONAI's id for the length of training); replaces
            ``config.epochs``.
        inferer: ``train#inferer``; the engine calls the network directly, as MONAI's ``SimpleInferer`` does,
            which is the only inferer it takes.
        train_handlers: ``train#handlers``. The engine runs no ignite handlers; a MONAI ``CheckpointLoader`` (what
            MONAI Label adds to continue from the bundle's model) starts training from its weights.
        ckpt_dir: where ``model.pt`` (the plain state dict of ``network_def``) is written after training.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        train_dataset: Any,
        val_dataset: Any = None,
        labels: Mapping | None = None,
        channel_names: Sequence[str] = (),
        regions: Mapping | None = None,
        name: str = "",
        max_epochs: int | None = None,
        inferer: Any = None,
        train_handlers: Sequence[Any] = (),
        ckpt_dir: str | os.PathLike | None = None,
    ) -> None:
        from monai.handlers import CheckpointLoader
        from monai.inferers import SimpleInferer

        if inferer is not None and not isinstance(inferer, SimpleInferer):
            raise ConfigError(
                f"train#inferer={type(inferer).__name__}: volmae's engine calls the network directly "
                "(SimpleInferer); set cpu_bf16 / amp in the fine-tuning settings instead"
            )
        init_from = config.init_from
        for h in train_handlers or ():
            if not isinstance(h, CheckpointLoader):
                raise ConfigError(
                    f"train#handlers: {type(h).__name__} is an ignite handler, and volmae's engine runs none; "
                    "it takes a CheckpointLoader (start from those weights) only"
                )
            init_from = str(h.load_path)
        if max_epochs is not None:
            config = replace(config, epochs=int(max_epochs))
        if init_from != config.init_from:
            config = replace(config, init_from=init_from, pretrained=None)
        self.config = config
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.datalist = _datalist(labels or {}, channel_names, regions, name)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.result: FinetuneResult | None = None

    @property
    def max_epochs(self) -> int:
        return self.config.epochs

    def run(self) -> FinetuneResult:
        """Fine-tune, then write ``<ckpt_dir>/model.pt`` (rank 0): the selected model's weights as a plain state
        dict, usable by ``volmae-infer --bundle`` and the zoo's tools whatever the length of training."""
        train = list(getattr(self.train_dataset, "data", self.train_dataset) or [])
        val = list(getattr(self.val_dataset, "data", self.val_dataset) or []) if self.val_dataset is not None else []
        if not train:
            raise ConfigError(
                "no training cases: pass --dataset_dir <MSD task folder> (or give train#dataset#data a case list)"
            )
        self.result = finetune(self.config, Cases(self.datalist, train, val))
        if self.ckpt_dir is not None and int(os.environ.get("RANK", "0")) == 0:
            weights = ModelArtifact.load(self.result.model_path).weights
            # not artifact.bundles.write_bundle_weights: it checks the weights against configs/inference.json alone,
            # while this run's network_def may come from an overlay (configs/primus.json trains another network)
            atomic_save(weights, self.ckpt_dir / "model.pt")
            root = self.ckpt_dir.parent
            print(f"model: {self.ckpt_dir / 'model.pt'} (the trained network_def's weights)\n"
                  f"segment a scan with it: volmae-infer scan.nii.gz --bundle {root}", flush=True)  # fmt: skip
        return self.result


class BundleModel:
    """``bundle_model``: the bundle's trained network as the running config describes it: ``network_config``,
    ``prep``, ``labels``, ``channel_names``, ``regions`` (ids an overlay may change) with ``weights`` (default
    ``<bundle_root>/models/model.pt``). Nothing is read until :meth:`load`, so a config checks without weights."""

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        network_config: NetworkConfig,
        prep: Any,
        labels: Mapping,
        channel_names: Sequence[str] = (),
        regions: Mapping | None = None,
        weights: str | os.PathLike | None = None,
    ) -> None:
        self.root, self.network, self.prep = Path(bundle_root), network_config, prep
        self.labels, self.channel_names, self.regions = dict(labels), tuple(channel_names), regions
        self.weights = weights

    def load(self) -> ModelArtifact:
        return bundle_model(
            self.root, self.network, self.prep, self.labels, self.channel_names, self.regions or None, self.weights
        ).expect("segmentation")


def evaluate(config: EvaluateConfig, model: BundleModel) -> EvaluationReport:
    """``evaluating``: :func:`volmae.evaluation.evaluate` of the bundle's model (read now) on the held-out fold."""
    return _evaluate(config, model.load())


class Inference:
    """``evaluator`` of ``inference.json``: :func:`volmae.inference.infer` over the config's ``dataset`` with the
    bundle's model (``model``, a :class:`BundleModel`) and the sliding-window settings of its ``inferer``
    (``roi_size``, ``sw_batch_size``, ``overlap``, ``mode`` and ``cpu_bf16`` are read)."""

    def __init__(
        self,
        model: BundleModel,
        dataset: Any,
        inferer: Any,
        output_dir: str | os.PathLike,
        device: str | torch.device = "auto",
        overwrite: bool = True,
    ) -> None:
        self.model, self.dataset, self.inferer = model, dataset, inferer
        self.output_dir, self.device, self.overwrite = str(output_dir), str(device), bool(overwrite)

    def run(self) -> list[InferredCase]:
        items = list(getattr(self.dataset, "data", self.dataset) or [])
        if not items:
            raise ConfigError("no input scans: pass --input <scan, DICOM series folder or folder of scans>")
        w = self.inferer
        overlap = w.overlap[0] if isinstance(w.overlap, Sequence) else w.overlap
        return infer(
            InferConfig(
                inputs=[it["image"] if isinstance(it, Mapping) else it for it in items],
                output=self.output_dir,
                device=self.device,
                roi_size=tuple(int(s) for s in w.roi_size),
                sw_batch_size=int(w.sw_batch_size),
                overlap=float(overlap),
                mode=str(getattr(w.mode, "value", w.mode)),
                cpu_bf16=bool(getattr(w, "cpu_bf16", False)),
                overwrite=self.overwrite,
                quiet=True,
            ),
            self.model.load(),
        )
