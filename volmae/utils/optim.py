"""Optimizer parameter groups: no weight decay on norms/biases/embeddings, layer-wise learning-rate decay.

Layer-wise decay (BEiT / MAE fine-tuning): the encoder's patch embedding is layer 0, block ``i`` is layer
``i + 1``, and everything after the encoder (final norm, decoder, head) is layer ``L + 1``; a parameter of layer
``l`` trains with ``lr * decay ** (L + 1 - l)``, so the pretrained early layers move least.
"""

from __future__ import annotations

import re

import torch

__all__ = ["param_groups"]

_NO_DECAY = ("position_embeddings", "pos_embed", "mask_token", "cls_token")
_BLOCK = re.compile(r"(?:^|\.)encoder\.blocks\.(\d+)\.")


def _layer_id(name: str, num_layers: int) -> int:
    if ".patch_embedding." in f".{name}" and name.startswith("encoder."):
        return 0
    m = _BLOCK.search(name)
    return int(m.group(1)) + 1 if m else num_layers + 1


def param_groups(
    model: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0, num_layers: int | None = None
) -> list[dict]:
    """Groups for ``torch.optim.AdamW`` with an ``lr_scale`` each; frozen parameters are left out."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay}: must be in (0, 1]")
    if num_layers is None:
        num_layers = len(getattr(getattr(model, "encoder", None), "blocks", []))
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or any(k in name for k in _NO_DECAY)
        layer = _layer_id(name, num_layers) if layer_decay < 1.0 else num_layers + 1
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers + 1 - layer),
                "name": f"layer{layer}_{'no_decay' if no_decay else 'decay'}",
            }
        groups[key]["params"].append(p)
    return list(groups.values())
