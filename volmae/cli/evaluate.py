"""``volmae-evaluate``: per-case, per-class Dice and HD95 of a fine-tuned model (``--model``) or a trained bundle
(``--bundle``) on held-out cases, in each case's original space."""

from __future__ import annotations

import sys

from volmae.cli.common import stage_main
from volmae.evaluation.evaluate import EvaluateConfig, evaluate


def _run(cfg: EvaluateConfig) -> str:
    evaluate(cfg)
    return f"metrics: {cfg.out_dir}/metrics.csv, {cfg.out_dir}/summary.json"


main = stage_main("volmae-evaluate", __doc__, EvaluateConfig, ["dataset_dir"], _run)

if __name__ == "__main__":
    sys.exit(main())
