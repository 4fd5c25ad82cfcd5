"""``volmae-demo``: masked self-pretraining -> fine-tuning -> held-out Dice on MSD hippocampus, one command.

Uses --dataset_dir, else $VOLMAE_DATA/msd_hippocampus or ../shared/data/msd_hippocampus, else downloads
Task04_Hippocampus with MONAI (md5-checked) into --cache-dir. --recipe cnn (default: S3D pretraining -> ResEnc
U-Net) finishes in about 20 minutes on 2 CPU cores with bf16 units (AMX, AMD Zen 4), about twice that without;
--recipe vit (MAE -> UNETR-Ti) in about 16; --recipe full is the long ViT schedule for a GPU.
"""

from __future__ import annotations

import sys

from volmae.cli.common import infer_hint, stage_main
from volmae.demo import DemoConfig, run_demo


def _run(cfg: DemoConfig) -> str:
    s = run_demo(cfg)
    per = ", ".join(f"{n} {v:.4f}" for n, v in s["dice"].items())
    return (
        f"mean foreground Dice {s['mean_dice']:.4f} ({per}) on {s['held_out_cases']} held-out cases "
        f"({s['total_s']:.0f} s); report: {cfg.out_dir}/report.md\nmodel: {s['model']}\n{infer_hint(model=s['model'])}"
    )


main = stage_main("volmae-demo", __doc__, DemoConfig, [], _run)

if __name__ == "__main__":
    sys.exit(main())
