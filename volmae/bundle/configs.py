"""The workflow configs of a bundle (``train``, ``evaluate``, ``inference``, ``multi_gpu_train``, ``pretrain``) as
dicts, rendered from a :class:`~volmae.bundle.specs.BundleSpec`.

They use MONAI's ignite workflow (``SupervisedTrainer`` / ``SupervisedEvaluator``, handlers, inferers) with the ids
MONAI Label overrides (``train#trainer#max_epochs``, ``train#dataset#data``, ``validate#dataset#data``,
``train#handlers``, ``device``, ``bundle_root``, ``network``); volmae supplies the network presets, preprocessing
presets and data lists through ``$volmae...`` expressions. MAE pretraining (``pretrain.json``) runs volmae's own
engine: there is no label/prediction pair for ignite's supervised trainer, and that engine resumes bit-identically.
"""

from __future__ import annotations

from volmae.bundle.specs import BundleSpec

__all__ = ["IMPORTS", "train_config", "evaluate_config", "inference_config", "multi_gpu_config", "pretrain_config"]

IMPORTS = [
    "$import os",
    "$import torch",
    "$import monai",
    "$import volmae",
    "$import volmae.bundle",
    "$import volmae.data",
]
LINKED = ("train.json", "evaluate.json", "inference.json", "pretrain.json", "metadata.json", "logging.conf")
_LOSS = "$monai.handlers.from_engine(['loss'], first=True)"
_PRED_LABEL = "$monai.handlers.from_engine(['pred', 'label'])"


def _common(s: BundleSpec) -> dict:
    out = {
        "imports": IMPORTS,
        "bundle_root": "$volmae.bundle.bundle_root()",
        "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
        "dataset_dir": f"$str(volmae.data.dataset_path('{s.dataset}') or '')",
        "device": "$volmae.bundle.device('auto')",
        "amp": "$torch.device(@device).type == 'cuda'",
        # MONAI's engines autocast on CUDA only; on the CPU, --cpu_bf16 true autocasts the network through volmae's
        # inferers (pays on CPUs with AMX or AMD Zen 4+: volmae.inference.inferers)
        "cpu_bf16": False,
        "seed": 0,
        "preset": s.preset,
        "in_channels": len(s.channels),
        "num_labels": max(s.labels) + 1,
        "out_channels": s.out_channels,
        "roi_size": list(s.roi_size),
    }
    if s.regions:
        out["regions"] = s.regions
    out["prep"] = {
        "_target_": "volmae.data.get_preprocessing",
        "name": s.preprocessing,
        "roi_size": "@roi_size",
        "num_samples": s.num_samples,
    }
    # UNETR for a ViT preset, nnFormer for an nnFormer preset (--preset switches); ignite's trainer wants one output
    out["network_def"] = {
        "_target_": "volmae.networks.build_segmenter",
        "preset": "@preset",
        "in_channels": "@in_channels",
        "out_channels": "@out_channels",
        "img_size": "@roi_size",
        "deep_supervision": False,
    }
    return out


def _transforms(kind: str, s: BundleSpec) -> str:
    regions = ", regions=@regions" if s.regions else ""
    return f"$volmae.data.{kind}_transforms(@prep, @num_labels, in_channels=@in_channels{regions})"


def _loader(ds: str, batch: int | str, shuffle: bool) -> dict:
    return {"_target_": "DataLoader", "dataset": ds, "batch_size": batch, "shuffle": shuffle, "num_workers": 0}


def _sliding(s: BundleSpec) -> dict:
    return {
        "_target_": "volmae.inference.inferers.Bf16SlidingWindowInferer",
        "roi_size": "@roi_size",
        "sw_batch_size": s.sw_batch_size,
        "overlap": 0.5,
        "mode": "gaussian",
        "cpu_bf16": "@cpu_bf16",
    }


def _discretize(s: BundleSpec, keys: str | list[str] = "pred") -> list[dict]:
    """Network output -> what metrics / files need: region masks (sigmoid > 0.5) or one-hot / argmax labels."""
    if s.regions:
        return [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        ]
    if keys == "pred":
        return [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    return [
        {
            "_target_": "AsDiscreted",
            "keys": ["pred", "label"],
            "argmax": [True, False],
            "to_onehot": "$[@out_channels, @out_channels]",
        }
    ]


def _dice(s: BundleSpec) -> dict:
    return {"_target_": "MeanDice", "include_background": bool(s.regions), "output_transform": _PRED_LABEL}


def train_config(s: BundleSpec) -> dict:
    cfg = _common(s)
    cfg.update(
        {
            "output_dir": "$os.path.join(@bundle_root, 'runs', 'train')",
            "fold": 0,
            "label_fraction": 1.0,
            "pretrained": None,
            "learning_rate": s.learning_rate,
            "weight_decay": 1e-4,
            "layer_decay": "$0.75 if @pretrained else 1.0",
            "warmup_epochs": 1,
            "grad_clip": 1.0,
            "val_interval": s.val_interval,
            "network": "$volmae.bundle.with_pretrained(@network_def, @pretrained).to(@device)",
            "loss": {
                "_target_": "DiceCELoss",
                **({"sigmoid": True} if s.regions else {"to_onehot_y": True, "softmax": True}),
            },
            "optimizer": "$volmae.bundle.optimizer(@network, @learning_rate, @weight_decay, @layer_decay)",
        }
    )
    cfg["train"] = {
        "preprocessing": _transforms("train", s),
        "dataset": {
            "_target_": "CacheDataset",
            "data": "$volmae.bundle.fold_items(@dataset_dir, @fold, 'train', @label_fraction)",
            "transform": "@train#preprocessing",
            "cache_rate": 1.0,
            "num_workers": 0,
        },
        "dataloader": _loader("@train#dataset", s.batch_size, True),
        "inferer": {"_target_": "volmae.inference.inferers.Bf16SimpleInferer", "cpu_bf16": "@cpu_bf16"},
        "lr_scheduler": {
            "_target_": "monai.optimizers.WarmupCosineSchedule",
            "optimizer": "@optimizer",
            "warmup_steps": "$@warmup_epochs * len(@train#dataloader)",
            "t_total": "$@train#trainer#max_epochs * len(@train#dataloader)",
            "end_lr": 0.0,
            "warmup_multiplier": 0.01,
        },
        # rank-0-only handlers last: multi_gpu_train.json drops the last two on the other ranks
        "handlers": [
            {
                "_target_": "LrScheduleHandler",
                "lr_scheduler": "@train#lr_scheduler",
                "epoch_level": False,
                "print_lr": False,
            },
            {"_target_": "volmae.bundle.handlers.GradClipHandler", "max_norm": "@grad_clip"},
            {
                "_target_": "ValidationHandler",
                "validator": "@validate#evaluator",
                "epoch_level": True,
                "interval": "@val_interval",
            },
            {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": _LOSS},
            {
                "_target_": "TensorBoardStatsHandler",
                "log_dir": "@output_dir",
                "tag_name": "train_loss",
                "output_transform": _LOSS,
            },
            {
                "_target_": "CheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "@network"},
                "save_final": True,
                "final_filename": "model_final.pt",
            },
        ],
        "trainer": {
            "_target_": "SupervisedTrainer",
            "max_epochs": s.max_epochs,
            "device": "@device",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "loss_function": "@loss",
            "optimizer": "@optimizer",
            "inferer": "@train#inferer",
            "amp": "@amp",
            "train_handlers": "@train#handlers",
        },
    }
    cfg["validate"] = {
        "preprocessing": _transforms("eval", s),
        "dataset": {
            "_target_": "CacheDataset",
            "data": "$volmae.bundle.fold_items(@dataset_dir, @fold, 'val')",
            "transform": "@validate#preprocessing",
            "cache_rate": 1.0,
            "num_workers": 0,
        },
        "dataloader": _loader("@validate#dataset", 1, False),
        "inferer": _sliding(s),
        "postprocessing": {"_target_": "Compose", "transforms": _discretize(s, ["pred", "label"])},
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "iteration_log": False},
            {
                "_target_": "CheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "@network"},
                "save_key_metric": True,
                "key_metric_filename": "model.pt",
            },
        ],
        "key_metric": {"val_mean_dice": _dice(s)},
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "amp": "@amp",
            "val_handlers": "@validate#handlers",
        },
    }
    cfg["initialize"] = ["$monai.utils.set_determinism(seed=@seed)"]
    cfg["run"] = ["$@train#trainer.run()"]
    cfg["training"] = "$@run"
    return cfg


def evaluate_config(s: BundleSpec) -> dict:
    """Merged over train.json: evaluate ``models/model.pt`` on the validation list, per-case CSVs."""
    return {
        "output_dir": "$os.path.join(@bundle_root, 'runs', 'eval')",
        "validate#handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$volmae.bundle.model_file(@bundle_root)",
                "load_dict": {"model": "@network"},
            },
            {"_target_": "StatsHandler", "iteration_log": False},
            {
                "_target_": "MetricsSaver",
                "save_dir": "@output_dir",
                "metrics": ["val_mean_dice", "val_hd95"],
                "metric_details": ["val_mean_dice", "val_hd95"],
                "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
                "summary_ops": "*",
            },
        ],
        "validate#additional_metrics": {
            "val_hd95": {
                "_target_": "HausdorffDistance",
                "include_background": bool(s.regions),
                "percentile": 95,
                "output_transform": _PRED_LABEL,
            }
        },
        "validate#evaluator#additional_metrics": "@validate#additional_metrics",
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@validate#evaluator.run()"],
        "evaluating": "$@run",
    }


def inference_config(s: BundleSpec) -> dict:
    cfg = _common(s)
    post = _discretize(s)
    if s.regions:
        post.append({"_target_": "volmae.data.regions.RegionsToLabeld", "keys": "pred", "regions": "@regions"})
    post += [
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": True,
            "to_tensor": True,
        },
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_dtype": "$numpy.uint8",
            "resample": False,
            "separate_folder": False,
        },
    ]
    cfg.update(
        {
            "output_dir": "$os.path.join(@bundle_root, 'predictions')",
            "input": "$os.path.join(@dataset_dir, 'imagesTs')",
            "datalist": "$volmae.bundle.input_items(@input)",
            "network": "$@network_def.to(@device)",
            "preprocessing": "$volmae.data.infer_transforms(@prep, in_channels=@in_channels)",
            "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
            "dataloader": _loader("@dataset", 1, False),
            "inferer": _sliding(s),
            "postprocessing": {"_target_": "Compose", "transforms": post},
            "handlers": [
                {
                    "_target_": "CheckpointLoader",
                    "load_path": "$volmae.bundle.model_file(@bundle_root)",
                    "load_dict": {"model": "@network"},
                },
                {"_target_": "StatsHandler", "iteration_log": False},
            ],
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@dataloader",
                "network": "@network",
                "inferer": "@inferer",
                "postprocessing": "@postprocessing",
                "amp": "@amp",
                "val_handlers": "@handlers",
            },
            "initialize": [],
            "run": ["$@evaluator.run()"],
            "inference": "$@run",
        }
    )
    return cfg


def multi_gpu_config(s: BundleSpec) -> dict:
    """Merged over train.json and started with ``torchrun``: one process per GPU (NCCL), or per CPU process (gloo)."""
    return {
        "imports": [*IMPORTS, "$import torch.distributed as dist"],
        "device": (
            "$torch.device(f\"cuda:{os.environ['LOCAL_RANK']}\") if torch.cuda.is_available() else torch.device('cpu')"
        ),
        "network": (
            "$torch.nn.parallel.DistributedDataParallel(volmae.bundle.with_pretrained(@network_def, @pretrained)"
            ".to(@device), device_ids=[@device] if torch.cuda.is_available() else None)"
        ),
        "train#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@train#dataset",
            "even_divisible": True,
            "shuffle": True,
        },
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": "$@train#handlers[: -2 if dist.get_rank() > 0 else None]",
        "validate#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@validate#dataset",
            "even_divisible": False,
            "shuffle": False,
        },
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$None if dist.get_rank() > 0 else @validate#handlers",
        "initialize": [
            "$dist.is_initialized() or "
            "dist.init_process_group(backend='nccl' if torch.cuda.is_available() else 'gloo')",
            "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
            "$monai.utils.set_determinism(seed=@seed)",
        ],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$volmae.bundle.end_distributed()"],
    }


def pretrain_config(s: BundleSpec) -> dict:
    return {
        "imports": [*IMPORTS, "$import volmae.pretraining"],
        "bundle_root": "$volmae.bundle.bundle_root()",
        "dataset_dir": f"$str(volmae.data.dataset_path('{s.dataset}') or '')",
        "preset": s.preset,
        "roi_size": list(s.roi_size),
        "pretrain": {
            "_target_": "volmae.pretraining.PretrainConfig",
            "dataset_dir": "@dataset_dir",
            "out_dir": "$os.path.join(@bundle_root, 'models', 'mae')",
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
        "run": ["$volmae.pretraining.pretrain(@pretrain)"],
        "pretraining": "$@run",
    }
