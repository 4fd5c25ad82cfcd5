"""``volmae-train``: fine-tune UNETR (from scratch or from MAE weights) with sliding-window validation."""

from __future__ import annotations

import sys

from volmae.cli.common import stage_main
from volmae.training.engine import FinetuneConfig, finetune


def _run(cfg: FinetuneConfig) -> str:
    r = finetune(cfg)
    return f"model: {r.model_path} (best validation Dice {r.best_dice:.4f} at epoch {r.best_epoch})"


main = stage_main("volmae-train", __doc__, FinetuneConfig, ["dataset_dir"], _run)

if __name__ == "__main__":
    sys.exit(main())
