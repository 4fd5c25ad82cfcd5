"""The workflow configs of a bundle (``train``, ``evaluate``, ``inference``, ``multi_gpu_train``, ``pretrain``, and the
``nnformer`` overlay) as dicts, rendered from a :class:`~volmae.bundle.specs.BundleSpec`.

Each workflow is a thin config over volmae's Python API (:mod:`volmae.bundle.workflow`): training runs
:func:`volmae.engine.finetune` through ``train#trainer``, evaluation :func:`volmae.evaluation.evaluate`, inference
:func:`volmae.inference.infer` through ``evaluator``, pretraining :func:`volmae.engine.pretrain`. The ids follow
MONAI's bundle workflow properties (``ConfigWorkflow(..., workflow_type="train" | "infer").check_properties()``
passes without a dataset) and what MONAI Label reads and overrides (``network_def``, ``preprocessing``,
``inferer``, ``postprocessing``, ``train#trainer#max_epochs``, ``train#dataset#data``, ``validate#dataset#data``,
``train#handlers``, ``device``, ``bundle_root``, ``network``).
"""

from __future__ import annotations

from volmae.bundle.specs import BundleSpec

__all__ = [
    "IMPORTS",
    "train_config",
    "evaluate_config",
    "inference_config",
    "multi_gpu_config",
    "pretrain_config",
    "nnformer_config",
    "resenc_config",
    "primus_config",
    "unetr_config",
]

IMPORTS = [
    "$import os",
    "$import torch",
    "$import volmae",
    "$import volmae.bundle",
    "$import volmae.data",
    "$import volmae.networks",
]


def _common(s: BundleSpec) -> dict:
    out = {
        "imports": IMPORTS,
        "bundle_root": "$volmae.bundle.bundle_root()",
        "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
        "dataset_dir": f"$str(volmae.data.dataset_path('{s.dataset}') or '')",
        "device": "auto",
        # on the CPU, --cpu_bf16 true autocasts the network to bf16: it pays on CPUs with AMX or AMD Zen 4+
        "cpu_bf16": False,
        "seed": 0,
        "preset": s.preset,
        "roi_size": list(s.roi_size),
        "channel_names": list(s.channels),
        "in_channels": "$len(@channel_names)",  # set the channels by naming them (BraTS 2013: FLAIR and T1c)
        "labels": {str(k): v for k, v in s.labels.items()},
        "out_channels": s.out_channels,
    }
    if s.regions:
        out["regions"] = s.regions
    out["prep"] = {
        "_target_": "volmae.data.get_preprocessing",
        "name": s.preprocessing,
        "roi_size": "@roi_size",
        "num_samples": s.num_samples,
    }
    # UNETR for a ViT preset, nnFormer for an nnFormer preset, a ResEnc U-Net or DynUNet for the CNNs (--preset
    # switches; the CNNs plan their strides for the preprocessing's spacing, as training does); the config is what a
    # model file stores, network_def the module MONAI's tools and MONAI Label build
    out["network_config"] = {
        "_target_": "volmae.networks.segmenter_config",
        "preset": "@preset",
        "in_channels": "@in_channels",
        "out_channels": "@out_channels",
        "img_size": "@roi_size",
        "spacing": "$@prep.pixdim or 1.0",
    }
    out["network_def"] = "$volmae.networks.build_network(@network_config)"
    return out


def _bundle_model(s: BundleSpec) -> dict:
    return {
        "_target_": "volmae.bundle.BundleModel",
        "bundle_root": "@bundle_root",
        "network_config": "@network_config",
        "prep": "@prep",
        "labels": "@labels",
        "channel_names": "@channel_names",
        "regions": "@regions" if s.regions else None,
    }


def _sliding(s: BundleSpec) -> dict:
    return {
        "_target_": "volmae.inference.inferers.Bf16SlidingWindowInferer",
        "roi_size": "@roi_size",
        "sw_batch_size": s.sw_batch_size,
        "overlap": 0.5,
        "mode": "gaussian",
        "cpu_bf16": "@cpu_bf16",
    }


def _fold_items(part: str) -> str:
    return f"$volmae.bundle.fold_items(@dataset_dir, @fold, '{part}', @label_fraction, @fraction_seed, @val_fraction)"


def train_config(s: BundleSpec) -> dict:
    cfg = _common(s)
    cfg["imports"] = [*IMPORTS, "$import volmae.engine"]
    cfg.update(
        {
            "network": "@network_def",  # MONAI Label's CheckpointLoader refers to it
            "output_dir": "$os.path.join(@bundle_root, 'runs', 'train')",
            "fold": 0,
            "label_fraction": 1.0,
            "fraction_seed": 0,
            "val_fraction": 0.1,
            "val_interval": s.val_interval,
            "pretrained": None,
            "learning_rate": s.learning_rate,
            "resume": False,
        }
    )
    cfg["finetune"] = {
        "_target_": "volmae.engine.FinetuneConfig",
        "dataset_dir": "@dataset_dir",
        "out_dir": "@output_dir",
        "preset": "@preset",
        "preprocessing": s.preprocessing,
        "roi_size": "@roi_size",
        "epochs": s.max_epochs,
        "batch_size": s.batch_size,
        "num_samples": s.num_samples,
        "lr": "@learning_rate",
        "weight_decay": 1e-4,
        "warmup_epochs": 1.0,
        "grad_clip": 1.0,
        "seed": "@seed",
        "device": "@device",
        "cpu_bf16": "@cpu_bf16",
        "pretrained": "@pretrained",
        "regions": bool(s.regions),
        "fold": "@fold",
        "label_fraction": "@label_fraction",
        "fraction_seed": "@fraction_seed",
        "val_every": "@val_interval",
        "val_fraction": "@val_fraction",
        "select_best": "$@val_interval > 0 and @val_fraction > 0",
        "sw_batch_size": s.sw_batch_size,
        "resume": "@resume",
        "overwrite": True,  # a new training run replaces the last one's runs/train (--resume true continues it)
    }
    cfg["train"] = {
        "dataset": {"_target_": "Dataset", "data": _fold_items("train")},
        "inferer": {"_target_": "SimpleInferer"},
        "handlers": [],
        "trainer": {
            "_target_": "volmae.bundle.Trainer",
            "config": "@finetune",
            "train_dataset": "@train#dataset",
            "val_dataset": "@validate#dataset",
            "labels": "@labels",
            "channel_names": "@channel_names",
            "regions": "@regions" if s.regions else None,
            "name": s.name,
            "max_epochs": s.max_epochs,
            "inferer": "@train#inferer",
            "train_handlers": "@train#handlers",
            "ckpt_dir": "@ckpt_dir",
        },
    }
    cfg["validate"] = {"dataset": {"_target_": "Dataset", "data": _fold_items("val")}}
    cfg["initialize"] = []
    cfg["run"] = ["$@train#trainer.run()"]
    cfg["training"] = "$@run"
    return cfg


def evaluate_config(s: BundleSpec) -> dict:
    """Merged over train.json: score ``models/model.pt`` on the held-out fold (the cases training never saw) in
    each scan's original space: per-case Dice and HD95 CSVs, a summary and pictures."""
    return {
        "imports": [*IMPORTS, "$import volmae.engine", "$import volmae.evaluation.evaluate"],
        "bundle_model": _bundle_model(s),
        "evaluate": {
            "_target_": "volmae.evaluation.evaluate.EvaluateConfig",
            "model": None,
            "dataset_dir": "@dataset_dir",
            "out_dir": "$os.path.join(@bundle_root, 'runs', 'eval')",
            "fold": "@fold",
            "device": "@device",
            "cpu_bf16": "@cpu_bf16",
            "sw_batch_size": s.sw_batch_size,
            "overlap": 0.5,
        },
        "run": ["$volmae.bundle.evaluate(@evaluate, @bundle_model)"],
        "evaluating": "$@run",
    }


def _postprocessing(s: BundleSpec) -> list[dict]:
    """For MONAI Label, which runs ``preprocessing`` / ``inferer`` / ``postprocessing`` itself: network output ->
    one label map in the input's space (volmae's own runs go through the predictor)."""
    if s.regions:
        post = [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            {"_target_": "volmae.data.regions.RegionsToLabeld", "keys": "pred", "regions": "@regions"},
        ]
    else:
        post = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    return post + [
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": True,
            "to_tensor": True,
        }
    ]


def inference_config(s: BundleSpec) -> dict:
    cfg = _common(s)
    cfg.update(
        {
            "input": None,
            "output_dir": "$os.path.join(@bundle_root, 'predictions')",
            "datalist": "$volmae.bundle.input_items(@input, os.path.join(@dataset_dir, 'imagesTs') "
            "if @dataset_dir else None)",
            "preprocessing": "$volmae.data.infer_transforms(@prep, in_channels=@in_channels)",
            "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
            "inferer": _sliding(s),
            "postprocessing": {"_target_": "Compose", "transforms": _postprocessing(s)},
            "bundle_model": _bundle_model(s),
            "evaluator": {
                "_target_": "volmae.bundle.Inference",
                "model": "@bundle_model",
                "dataset": "@dataset",
                "inferer": "@inferer",
                "output_dir": "@output_dir",
                "device": "@device",
            },
            "initialize": [],
            "run": ["$@evaluator.run()"],
            "inference": "$@run",
        }
    )
    return cfg


def multi_gpu_config(s: BundleSpec) -> dict:  # noqa: ARG001 - the same for every bundle
    """Merged over train.json and started with ``torchrun``: volmae's engine joins the job itself (one process per
    GPU with NCCL, or per CPU process with gloo) and this overlay ends the process group afterwards."""
    return {
        "imports": [*IMPORTS, "$import volmae.engine", "$import volmae.utils.distributed"],
        "finalize": ["$volmae.utils.distributed.shutdown_distributed()"],
    }


def pretrain_config(s: BundleSpec) -> dict:
    return {
        "imports": [*IMPORTS, "$import volmae.engine"],
        "bundle_root": "$volmae.bundle.bundle_root()",
        "dataset_dir": f"$str(volmae.data.dataset_path('{s.dataset}') or '')",
        "preset": s.preset,
        "roi_size": list(s.roi_size),
        "pretrain": {
            "_target_": "volmae.engine.PretrainConfig",
            "dataset_dir": "@dataset_dir",
            "out_dir": "$os.path.join(@bundle_root, 'models', 'pretrained')",
            "preset": "@preset",
            "preprocessing": s.preprocessing,
            "roi_size": "@roi_size",
            "epochs": s.pretrain_epochs,
            "batch_size": 4,
            "lr": s.pretrain_lr,
            "warmup_epochs": s.pretrain_warmup_epochs,
            "fold": 0,
            "mask_ratio": None,  # the preset's: 0.75 for a ViT MAE, 0.6 for nnFormer
            "device": "auto",
            "resume": False,
            "overwrite": False,
        },
        "run": ["$volmae.engine.pretrain(@pretrain)"],
        "pretraining": "$@run",
    }


def _network_overlay(choice: tuple[str, tuple[int, int, int]]) -> dict:
    preset, roi = choice
    return {"preset": preset, "roi_size": list(roi)}


def nnformer_config(s: BundleSpec) -> dict:
    """Overlay for any of the workflows above: the nnFormer encoder and decoder (masked-volume pretraining) at an ROI
    its windows fit, instead of the bundle's network."""
    return _network_overlay(s.nnformer)


def resenc_config(s: BundleSpec) -> dict:
    """Overlay for any of the workflows above: the residual-encoder CNN U-Net (S3D sparse-masked pretraining of the
    whole U-Net; fine-tuning from it loads encoder and decoder, with a fresh head) instead of the bundle's network
    (the hippocampus bundle's own)."""
    return _network_overlay(s.resenc)


def primus_config(s: BundleSpec) -> dict:
    """Overlay for any of the workflows above: the Primus-style ViT (8^3 tokens, RoPE, EVA-02 blocks, patch decoder;
    MAE pretraining of the whole network, fine-tuning from it loads encoder and decoder) instead of the bundle's
    network."""
    return _network_overlay(s.primus)


def unetr_config(s: BundleSpec) -> dict:
    """Overlay for any of the workflows above: UNETR on a ViT encoder (MAE pretraining of the encoder) instead of the
    bundle's network (the btcv and brats bundles' own)."""
    return _network_overlay(s.unetr)
