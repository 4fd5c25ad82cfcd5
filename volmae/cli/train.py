"""``volmae-train``: fine-tune a segmentation network (from scratch or from masked pretraining) with sliding-window
validation."""

from __future__ import annotations

import sys

from volmae.cli.common import infer_hint, stage_main
from volmae.engine.finetune import FinetuneConfig, finetune


def _run(cfg: FinetuneConfig) -> str:
    r = finetune(cfg)
    if r.best_epoch < 0:
        line = f"model: {r.model_path} (last epoch; validation was off)"
    else:
        which = f"epoch {r.best_epoch}, the best validated" if cfg.select_best else "last epoch"
        line = f"model: {r.model_path} ({which}; best validation Dice {r.best_dice:.4f} at epoch {r.best_epoch})"
    return f"{line}\n{infer_hint(model=r.model_path)}"


main = stage_main("volmae-train", __doc__, FinetuneConfig, ["dataset_dir"], _run)

if __name__ == "__main__":
    sys.exit(main())
