"""Supervised fine-tuning."""

from volmae.training.engine import FinetuneConfig, FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]
