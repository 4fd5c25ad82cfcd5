"""``volmae-train``: fine-tune UNETR (from scratch or from MAE weights) with sliding-window validation."""

from __future__ import annotations

import sys

from volmae.cli.common import stage_main
from volmae.engine.finetune import FinetuneConfig, finetune


def _run(cfg: FinetuneConfig) -> str:
    r = finetune(cfg)
    if r.best_epoch < 0:
        return f"model: {r.model_path} (last epoch; validation was off)"
    which = f"epoch {r.best_epoch}, the best validated" if cfg.select_best else "last epoch"
    return f"model: {r.model_path} ({which}; best validation Dice {r.best_dice:.4f} at epoch {r.best_epoch})"


main = stage_main("volmae-train", __doc__, FinetuneConfig, ["dataset_dir"], _run)

if __name__ == "__main__":
    sys.exit(main())
