"""The training engines: masked pretraining (:mod:`~volmae.engine.pretrain`) and supervised fine-tuning
(:mod:`~volmae.engine.finetune`) over one optimisation loop (:mod:`~volmae.engine.loop`: exact resume, DDP,
checkpoints), with the settings they share (:mod:`~volmae.engine.stage`) and the fine-tuning losses
(:mod:`~volmae.engine.losses`). ``volmae-pretrain`` / ``volmae-train`` and the bundles' workflows run these."""

from volmae.engine.finetune import Cases, FinetuneConfig, FinetuneResult, finetune, fold_cases
from volmae.engine.loop import TrainingError, TrainingInterrupted
from volmae.engine.pretrain import PretrainConfig, PretrainResult, pretrain

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "pretrain",
    "FinetuneConfig",
    "FinetuneResult",
    "Cases",
    "fold_cases",
    "finetune",
    "TrainingError",
    "TrainingInterrupted",
]
