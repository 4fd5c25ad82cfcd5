"""Render a :class:`~volmae.bundle.specs.BundleSpec` into a MONAI bundle folder.

Layout written (MONAI bundle specification; MONAI Label's ``monaibundle`` app reads ``configs/``)::

    <bundle>/configs/{metadata,train,evaluate,inference,multi_gpu_train,pretrain}.json, logging.conf
    <bundle>/{train,inference,evaluate,pretrain}.json, metadata.json, logging.conf   (links into configs/)
    <bundle>/docs/README.md, LICENSE

The top-level links make ``python -m monai.bundle run training --config_file bundles/btcv/train.json`` work as well
as the standard ``.../configs/train.json``; both resolve ``bundle_root`` to ``bundles/btcv`` (see
:func:`volmae.bundle.bundle_root`), so models, logs and predictions land in the bundle folder. The workflow configs
themselves are in :mod:`volmae.bundle.configs`.
"""

from __future__ import annotations

import json
from pathlib import Path

from volmae.bundle.configs import (
    evaluate_config,
    inference_config,
    multi_gpu_config,
    pretrain_config,
    train_config,
)
from volmae.bundle.readme import render_readme
from volmae.bundle.specs import BUNDLES, BundleSpec

__all__ = ["bundle_configs", "bundle_files", "metadata", "write_bundle", "write_all", "LINKED"]

_VERSIONS = {"monai": "1.6.1", "torch": "2.13.0", "numpy": "2.4.6"}
_PACKAGES = {
    "volmae": "0.1.0",
    "nibabel": "5.4.2",
    "SimpleITK": "2.5.7",
    "einops": "0.8.2",
    "pytorch-ignite": "0.5.5",
    "tensorboard": "2.21.0",
}
LINKED = ("train.json", "evaluate.json", "inference.json", "pretrain.json", "metadata.json", "logging.conf")


def _tensor(s: BundleSpec, channels: int, fmt: str, channel_def: dict) -> dict:
    return {
        "type": "image",
        "format": fmt,
        "modality": s.modality,
        "num_channels": channels,
        "spatial_shape": list(s.roi_size),
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": True,
        "channel_def": channel_def,
    }


def metadata(s: BundleSpec) -> dict:
    labels = {str(k): v for k, v in s.labels.items()}
    desc = ", ".join(f"{k} {v}" for k, v in s.labels.items())
    fmt = "magnitude" if s.modality == "MR" else "hounsfield"
    pred = _tensor(s, s.out_channels, "segmentation", labels)
    out = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.2.0",
        "changelog": {
            "0.2.0": "cpu_bf16: bf16 autocast of the network on the CPU (opt-in, for CPUs with AMX)",
            "0.1.0": f"first release: UNETR ({s.preset}), {s.roi_size[0]}x{s.roi_size[1]}x{s.roi_size[2]} ROI",
        },
        "monai_version": _VERSIONS["monai"],
        "pytorch_version": _VERSIONS["torch"],
        "numpy_version": _VERSIONS["numpy"],
        "required_packages_version": dict(_PACKAGES),
        "supported_apps": {"monai-label": "0.8.5"},
        "name": f"volmae {s.name}",
        "task": s.task,
        "description": s.description,
        "authors": "volmae developers",
        "copyright": "Copyright (c) volmae developers",
        "data_source": s.data_source,
        "data_type": "nibabel",
        "image_classes": ", ".join(f"channel {i}: {c}" for i, c in enumerate(s.channels)),
        "label_classes": desc,
        "pred_classes": desc,
        "eval_metrics": {},
        "intended_use": "Research only; not for clinical use",
        "references": list(s.references),
        "network_data_format": {
            "inputs": {"image": _tensor(s, len(s.channels), fmt, {str(i): c for i, c in enumerate(s.channels)})},
            "outputs": {"pred": pred},
        },
    }
    if s.regions:  # pred's channel_def names the final label values (MONAI Label reads it), not the region channels
        out["network_data_format"]["post_processed_outputs"] = {"pred": {**pred, "num_channels": 1}}
        out["pred_classes"] = f"network channels {', '.join(s.regions)} (sigmoid); written label map: {desc}"
    return out


def bundle_configs(s: BundleSpec) -> dict[str, dict]:
    return {
        "metadata.json": metadata(s),
        "train.json": train_config(s),
        "evaluate.json": evaluate_config(s),
        "inference.json": inference_config(s),
        "multi_gpu_train.json": multi_gpu_config(s),
        "pretrain.json": pretrain_config(s),
    }


_LOGGING = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def bundle_files(s: BundleSpec, license_text: str) -> dict[str, str]:
    """Relative path -> text of every generated file of the bundle (links excluded)."""
    files = {f"configs/{k}": json.dumps(v, indent=4) + "\n" for k, v in bundle_configs(s).items()}
    files["configs/logging.conf"] = _LOGGING
    files["docs/README.md"] = render_readme(s)
    files["LICENSE"] = license_text
    return files


def write_bundle(s: BundleSpec, folder: str | Path, license_text: str) -> list[Path]:
    """Write the bundle's files and top-level links; returns the paths written."""
    root = Path(folder)
    written = []
    for rel, text in bundle_files(s, license_text).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    for name in LINKED:
        link = root / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("configs") / name)
        written.append(link)
    return written


def write_all(bundles_dir: str | Path, license_text: str) -> list[Path]:
    return [p for s in BUNDLES.values() for p in write_bundle(s, Path(bundles_dir) / s.name, license_text)]
