"""volmae: MONAI-based 3D medical image segmentation with masked-autoencoder pretraining.

The typed Python API (each stage's console script is a thin layer over it)::

    from volmae import PretrainConfig, pretrain, FinetuneConfig, finetune, EvaluateConfig, evaluate
    mae = pretrain(PretrainConfig(dataset_dir="Task04_Hippocampus", out_dir="runs/mae"))
    seg = finetune(FinetuneConfig(dataset_dir="Task04_Hippocampus", pretrained=str(mae.model_path)))
    report = evaluate(EvaluateConfig(model=str(seg.model_path), dataset_dir="Task04_Hippocampus"))
    model = ModelArtifact.load(seg.model_path)   # the model file: network, task, weights, provenance
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.4.0"

_API = {
    "PretrainConfig": "volmae.engine.pretrain",
    "pretrain": "volmae.engine.pretrain",
    "FinetuneConfig": "volmae.engine.finetune",
    "finetune": "volmae.engine.finetune",
    "ModelArtifact": "volmae.artifact.model",
    "EvaluateConfig": "volmae.evaluation.evaluate",
    "evaluate": "volmae.evaluation.evaluate",
    "Predictor": "volmae.inference.predictor",
    "DemoConfig": "volmae.demo",
    "run_demo": "volmae.demo",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import volmae` (and `--help` of the console scripts) stays fast.
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'volmae' has no attribute {name!r}")
