"""volmae model files <-> plain MONAI networks (``monai.networks.nets.UNETR`` and ``ViT``).

- :func:`export_to_monai`: a volmae segmentation model -> a MONAI ``UNETR`` state dict plus the constructor
  arguments that rebuild it exactly (patch 16, 12 blocks, ``skip_norm=False``: MONAI's UNETR has neither other
  patch sizes nor skip LayerNorms); or, with ``encoder_only`` (and always for an MAE model), the encoder as a
  MONAI ``ViT`` state dict, which is also what ``UNETR(...).vit.load_state_dict`` takes.
- :func:`import_monai_unetr`: a MONAI ``UNETR`` state dict -> a complete volmae segmentation model
  (:class:`~volmae.artifact.model.ModelArtifact`). Sizes are read off the weight shapes; what the weights cannot
  tell (heads, ROI, preprocessing, class names) is passed in.

Fine-tuning from MONAI weights needs no conversion: ``--pretrained`` reads MONAI ``UNETR`` / ``ViT`` files directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from volmae.artifact.model import ModelArtifact, Provenance, Task
from volmae.data.transforms import get_preprocessing
from volmae.errors import CheckpointError, ConfigError
from volmae.networks.registry import NetworkConfig, build_network
from volmae.networks.weights import (
    encoder_state_from,
    monai_unetr_to_volmae,
    unwrapped_state,
    volmae_unetr_to_monai,
)

__all__ = ["export_to_monai", "import_monai_unetr", "monai_unetr_sizes"]


def _encoder_kwargs_for_monai_vit(enc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "in_channels": enc["in_channels"],
        "img_size": list(enc["img_size"]),
        "patch_size": list(enc["patch_size"]),
        "hidden_size": enc["hidden_size"],
        "mlp_dim": enc["mlp_dim"],
        "num_layers": enc["num_layers"],
        "num_heads": enc["num_heads"],
        "proj_type": "conv",
        "pos_embed_type": enc.get("pos_embed_type", "sincos"),
        "qkv_bias": enc.get("qkv_bias", True),
        "dropout_rate": enc.get("dropout_rate", 0.0),
    }


def export_to_monai(
    model: ModelArtifact, encoder_only: bool = False
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(MONAI class name, constructor kwargs, state dict)`` for a volmae ViT model (MAE or UNETR)."""
    kind = model.kind
    where = model.source or "model"
    if model.family != "vit":
        raise CheckpointError(f"{where}: a volmae {kind} model; MONAI has no such network to export it to")
    enc = model.network.encoder or {}
    if kind != "unetr" or encoder_only:
        return "ViT", _encoder_kwargs_for_monai_vit(enc), encoder_state_from(model.weights)
    unetr = model.network.arguments
    problems = []
    if list(enc["patch_size"]) != [16, 16, 16]:
        problems.append(f"patch {enc['patch_size']} (MONAI's UNETR is fixed to 16)")
    if enc["num_layers"] != 12:
        problems.append(f"{enc['num_layers']} encoder blocks (MONAI's UNETR takes skips from blocks 3/6/9 of 12)")
    if unetr.get("skip_norm", True):
        problems.append("skip LayerNorms (skip_norm=True, volmae's default; MONAI's UNETR has none)")
    if unetr.get("skip_indices") not in (None, [3, 6, 9]):
        problems.append(f"skip blocks {unetr['skip_indices']}")
    if problems:
        raise CheckpointError(
            "this segmentation model cannot be written as a MONAI UNETR: " + "; ".join(problems) + ". Export the "
            "encoder alone (encoder_only / --encoder-only) and load it into UNETR(...).vit, or fine-tune with "
            "skip_norm=False, patch 16 and 12 blocks"
        )
    kwargs = {
        "in_channels": enc["in_channels"],
        "out_channels": unetr["out_channels"],
        "img_size": list(enc["img_size"]),
        "feature_size": unetr["feature_size"],
        "hidden_size": enc["hidden_size"],
        "mlp_dim": enc["mlp_dim"],
        "num_heads": enc["num_heads"],
        "proj_type": "conv",
        "norm_name": unetr.get("norm_name", "instance"),
        "res_block": unetr.get("res_block", True),
        "qkv_bias": enc.get("qkv_bias", True),
        "dropout_rate": enc.get("dropout_rate", 0.0),
    }
    return "UNETR", kwargs, volmae_unetr_to_monai(model.weights)


def monai_unetr_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a MONAI ``UNETR`` state dict says about its sizes (everything but heads and ROI shape)."""
    state = unwrapped_state(state)
    try:
        patch = state["vit.patch_embedding.patch_embeddings.weight"]
        blocks = {int(k.split(".")[2]) for k in state if k.startswith("vit.blocks.")}
        return {
            "in_channels": patch.shape[1],
            "hidden_size": patch.shape[0],
            "patch_size": list(patch.shape[2:]),
            "num_layers": max(blocks) + 1,
            "mlp_dim": state["vit.blocks.0.mlp.linear1.weight"].shape[0],
            "qkv_bias": "vit.blocks.0.attn.qkv.bias" in state,
            "num_tokens": state["vit.patch_embedding.position_embeddings"].shape[1],
            "out_channels": state["out.conv.conv.weight"].shape[0],
            "feature_size": state["encoder1.layer.conv1.conv.weight"].shape[0],
            "res_block": "encoder1.layer.conv3.conv.weight" in state,
            "batch_norm": any(k.endswith("running_mean") for k in state),
        }
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not a MONAI UNETR state dict (missing {e})") from None


def import_monai_unetr(
    state: Mapping[str, torch.Tensor],
    img_size: Sequence[int] | int | None = None,
    num_heads: int = 12,
    preprocessing: str = "ct",
    labels: Mapping[int, str] | None = None,
    source: str = "",
) -> ModelArtifact:
    """A volmae segmentation model (``kind="unetr"``, ``skip_norm=False``) holding a MONAI UNETR's weights.

    ``img_size`` defaults to the cube with the stored number of tokens (MONAI's 96^3 gives 216 = 6^3 tokens).
    """
    sizes = monai_unetr_sizes(state)
    if sizes["patch_size"] != [16, 16, 16]:
        raise CheckpointError(f"patch {sizes['patch_size']}: MONAI's UNETR uses 16")
    if img_size is None:
        side = round(sizes["num_tokens"] ** (1 / 3))
        if side**3 != sizes["num_tokens"]:
            raise CheckpointError(f"{sizes['num_tokens']} tokens is not a cube; pass img_size (the training ROI)")
        img_size = [16 * side] * 3
    roi = [int(img_size)] * 3 if isinstance(img_size, int) else [int(s) for s in img_size]
    if math.prod(s // 16 for s in roi) != sizes["num_tokens"]:
        raise CheckpointError(f"img_size {roi} gives {math.prod(s // 16 for s in roi)} tokens, the weights have "
                              f"{sizes['num_tokens']}")  # fmt: skip
    out_channels = sizes["out_channels"]
    labels = dict(labels) if labels else {k: ("background" if k == 0 else f"class_{k}") for k in range(out_channels)}
    if len(labels) != out_channels:
        raise CheckpointError(f"{len(labels)} label names for a network with {out_channels} output channels")
    encoder = {
        "in_channels": sizes["in_channels"],
        "img_size": roi,
        "patch_size": [16, 16, 16],
        "hidden_size": sizes["hidden_size"],
        "mlp_dim": sizes["mlp_dim"],
        "num_layers": sizes["num_layers"],
        "num_heads": num_heads,
        "pos_embed_type": "learnable",  # MONAI's UNETR learns its position embedding
        "qkv_bias": sizes["qkv_bias"],
    }
    unetr = {
        "out_channels": out_channels,
        "feature_size": sizes["feature_size"],
        "norm_name": "batch" if sizes["batch_norm"] else "instance",
        "res_block": sizes["res_block"],
        "skip_norm": False,
    }
    config = NetworkConfig("unetr", "monai-unetr", unetr, encoder)
    try:
        model = build_network(config)
    except ConfigError as e:
        raise CheckpointError(f"these weights do not make a valid network: {e}") from None
    weights = monai_unetr_to_volmae(state)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"MONAI UNETR weights do not fit ({str(e).splitlines()[0]})") from None
    task = Task(
        get_preprocessing(preprocessing, roi_size=roi),
        sizes["in_channels"],
        {int(k): str(v) for k, v in labels.items()},
        dataset="imported from MONAI UNETR",
    )
    return ModelArtifact(config, task, weights, Provenance.now("import", initialised_from=source or "MONAI UNETR"))
