"""MAE self-pretraining."""

from volmae.pretraining.engine import PretrainConfig, PretrainResult, pretrain

__all__ = ["PretrainConfig", "PretrainResult", "pretrain"]
