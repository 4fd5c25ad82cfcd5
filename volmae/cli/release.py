"""``volmae-release``: train a bundle's model with the recipe volmae measured best, score it on the held-out fold
(and, with --cv-folds, by cross-validation on the training folds), pack its weights (bf16 when the Dice is
unchanged) and, with --into, install them as the bundle's models/model.pt with a model card.

Example: volmae-release --bundle hippocampus --out-dir runs/release --into volmae/bundles/hippocampus
"""

from __future__ import annotations

import sys

from volmae.cli.common import infer_hint, stage_main
from volmae.release import ReleaseConfig, release


def _run(cfg: ReleaseConfig) -> str:
    s = release(cfg)
    ho = s["held_out"]
    where = f"{cfg.into}/models/model.pt" if cfg.into else f"{cfg.out_dir}/model.pt"
    card = f"{cfg.into}/models/model_card.md" if cfg.into else f"{cfg.out_dir}/model_card.md"
    use = infer_hint(bundle=cfg.into) if cfg.into else infer_hint(model=where)
    per = ", ".join(f"{n} {v:.4f}" for n, v in ho["dice"].items())
    return (
        f"held-out mean Dice {ho['mean_dice']:.4f} ({per}) on {ho['cases']} cases; weights {s['packed']['dtype']}, "
        f"{s['packed']['bytes'] / 2**20:.1f} MB\nmodel: {where}\nmodel card: {card}\n{use}"
    )


HELPS = {
    "bundle": "the bundle whose model is released: hippocampus, btcv, brats",
    "dataset_dir": "the bundle's MSD-layout task folder (default: its dataset under $VOLMAE_DATA or ../shared/data)",
    "into": "bundle folder whose models/ receives the release (model.pt, release.json, model_card.md)",
    "install_from": "a finished release's --out-dir: install it into --into without training",
    "recipe": "volmae-demo recipe whose pretraining and fine-tuning settings train the model: cnn (S3D -> ResEnc "
    "U-Net) or vit (MAE -> UNETR); its network must be the bundle's",
    "steps": "fine-tuning steps (default: the recipe's)",
    "pretrain_epochs": "pretraining epochs (default: the recipe's)",
    "pretrained": "a finished pretraining's model.pt to fine-tune from instead of pretraining",
    "cv_folds": "cross-validate the recipe on this many training folds (each trained without it and scored on it; "
    "the held-out fold takes no part); 0: none",
    "dtype": "float type of the packed weights: bf16 (half the file, kept only when the held-out Dice is unchanged), "
    "fp16 or fp32",
    "dice_tolerance": "largest change of held-out mean Dice that packing in --dtype may cause (else fp32 is packed)",
    "max_mb": "largest packed file in MB (the package ships it)",
    "fold": "held-out fold the released model is scored on (the folder's splits.json, else a seeded 5-fold split)",
    "resume": "continue a stopped release in --out-dir: its finished runs are reused, a stopped one continues from "
    "its checkpoint, the rest are trained",
    "overwrite": "replace the runs already in --out-dir",
}

main = stage_main("volmae-release", __doc__, ReleaseConfig, [], _run, HELPS)

if __name__ == "__main__":
    sys.exit(main())
