"""Render a :class:`~volmae.bundle.specs.BundleSpec` into a MONAI bundle folder.

Layout written (MONAI bundle specification; MONAI Label's ``monaibundle`` app reads ``configs/``)::

    <bundle>/configs/{metadata,train,evaluate,inference,multi_gpu_train,pretrain}.json, logging.conf
    <bundle>/configs/{nnformer,resenc,primus,unetr}.json   (overlays: a network family; one is the bundle's own)
    <bundle>/{train,inference,evaluate,pretrain}.json, metadata.json, logging.conf   (links into configs/)
    <bundle>/docs/README.md, docs/data_license.txt, LICENSE, large_files.yml

The top-level links make ``python -m monai.bundle run training --config_file bundles/btcv/train.json`` work as well
as the standard ``.../configs/train.json``; both resolve ``bundle_root`` to ``bundles/btcv`` (see
:func:`volmae.bundle.bundle_root`), so models, logs and predictions land in the bundle folder. The workflow configs
themselves are in :mod:`volmae.bundle.configs`.
"""

from __future__ import annotations

import json
from pathlib import Path

from volmae import __version__
from volmae.artifact.hub import WEIGHTS_FILE
from volmae.bundle.configs import (
    evaluate_config,
    inference_config,
    multi_gpu_config,
    nnformer_config,
    pretrain_config,
    primus_config,
    resenc_config,
    train_config,
    unetr_config,
)
from volmae.bundle.readme import render_readme
from volmae.bundle.specs import BUNDLES, BundleSpec

__all__ = [
    "bundle_configs",
    "bundle_files",
    "metadata",
    "weights_metadata",
    "large_files",
    "write_bundle",
    "write_all",
    "LINKED",
]

# What the bundles are checked with (their tests run these versions). numpy 2.2 is the newest line that still
# installs on Python 3.10, the oldest Python volmae supports; volmae itself is this source tree's version (build the
# wheel: `pip wheel --no-deps .`; it is not on PyPI).
_VERSIONS = {"monai": "1.6.1", "torch": "2.13.0", "numpy": "2.2.6"}
_PACKAGES = {
    "volmae": __version__,
    "nibabel": "5.4.2",
    "SimpleITK": "2.5.7",
    "einops": "0.8.2",
    "tensorboard": "2.21.0",
}
_CHANGELOG = {
    "0.7.0": "hippocampus: new weights from volmae 0.4.0's release (the same recipe with its 10 pretraining epochs, "
    "cross-validated on the training folds); the README's scores and eval_metrics are read from models/release.json",
    "0.6.0": "hippocampus: the residual-encoder U-Net (resenc-tiny, S3D-pretrained) is the bundle's network and its "
    "trained weights ship in models/ (model card: models/model_card.md); unetr.json overlay; the metadata's weights "
    "field (licence, size of released files)",
    "0.5.0": "primus.json overlay: a Primus-style ViT (8^3 tokens, 3D RoPE, EVA-02 blocks, patch decoder) with MAE "
    "pretraining of the whole network",
    "0.4.0": "resenc.json overlay: a residual-encoder CNN U-Net with S3D sparse-masked pretraining, transferred whole "
    "into fine-tuning; the CNNs' network_config follows the preprocessing spacing",
    "0.3.0": "training, evaluation and inference run volmae's own engine, evaluation and predictor; validation and "
    "model selection use cases drawn from the training cases, never the held-out fold; models/model.pt (the plain "
    "state dict of network_def) is written at the end of any training run; nnformer.json overlay; TorchScript "
    "export of the UNETR; eval_metrics, data licence and large_files.yml",
    "0.2.0": "cpu_bf16: bf16 autocast of the network on the CPU (opt-in, for CPUs with AMX)",
    "0.1.0": "first release: UNETR",
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
    # channel_def of pred: what each network output channel is (a label, or a sigmoid region for BraTS)
    pred = _tensor(s, s.out_channels, "segmentation", {str(k): v for k, v in s.output_channels.items()})
    out = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": next(iter(_CHANGELOG)),
        "changelog": dict(_CHANGELOG),
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
        "eval_metrics": dict(s.eval_metrics),
        "intended_use": "Research only; not for clinical use",
        "weights": weights_metadata(s),
        "references": list(s.references),
        "network_data_format": {
            "inputs": {"image": _tensor(s, len(s.channels), fmt, {str(i): c for i, c in enumerate(s.channels)})},
            "outputs": {"pred": pred},
        },
    }
    if s.regions:  # the written label map: one channel holding the label values
        out["network_data_format"]["post_processed_outputs"] = {
            "pred": {**pred, "num_channels": 1, "channel_def": labels}
        }
        out["pred_classes"] = f"network channels {', '.join(s.regions)} (sigmoid); written label map: {desc}"
    return out


def weights_metadata(s: BundleSpec) -> dict:
    """The metadata's ``weights`` field, volmae's addition to MONAI's (the schema allows extra fields): the trained
    weights' licence and, once released, each large file's size in bytes (``large_files.yml`` cannot hold it: MONAI
    passes every key of an entry to ``download_url``)."""
    out: dict = {"license": s.weights_license}
    if s.release:
        out["files"] = {WEIGHTS_FILE: {"size": s.release.size}}
    return out


def bundle_configs(s: BundleSpec) -> dict[str, dict]:
    return {
        "metadata.json": metadata(s),
        "train.json": train_config(s),
        "evaluate.json": evaluate_config(s),
        "inference.json": inference_config(s),
        "multi_gpu_train.json": multi_gpu_config(s),
        "pretrain.json": pretrain_config(s),
        "nnformer.json": nnformer_config(s),
        "resenc.json": resenc_config(s),
        "primus.json": primus_config(s),
        "unetr.json": unetr_config(s),
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


_LARGE_FILES = """# Files too large for the repository that the MONAI model zoo's tools download into the bundle.
# No trained weights are released for this bundle yet: train it (docs/README.md) to get models/model.pt.
large_files: []
"""
_LARGE_FILES_RELEASED = """# Files too large for the repository that the MONAI model zoo's tools download into the
# bundle (python -m monai.bundle download_large_files --bundle_path <bundle>); volmae-download reads them too.
# Size and licence: configs/metadata.json, "weights".
large_files:
- path: {path}
  url: {url}
  hash_val: {sha256}
  hash_type: sha256
"""


_LARGE_FILES_SHIPPED = """# Files too large for the repository that the MONAI model zoo's tools download into the
# bundle. None: the released weights (models/model.pt, at most 16 MB) ship inside the bundle itself.
large_files: []
"""


def large_files(s: BundleSpec) -> str:
    """``large_files.yml`` in MONAI's format: the released weights (path, url, hash_val, hash_type only), or none."""
    if s.release is None:
        return _LARGE_FILES_SHIPPED if s.shipped_weights else _LARGE_FILES
    # quoted: YAML would read a URL with ": " or an all-digit hash as something else
    return _LARGE_FILES_RELEASED.format(
        path=WEIGHTS_FILE, url=json.dumps(s.release.url), sha256=json.dumps(s.release.sha256)
    )


def bundle_files(s: BundleSpec, license_text: str) -> dict[str, str]:
    """Relative path -> text of every generated file of the bundle (links excluded)."""
    files = {f"configs/{k}": json.dumps(v, indent=4) + "\n" for k, v in bundle_configs(s).items()}
    files["configs/logging.conf"] = _LOGGING
    files["docs/README.md"] = render_readme(s)
    files["docs/data_license.txt"] = s.data_license
    files["LICENSE"] = license_text
    files["large_files.yml"] = large_files(s)
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
