#!/usr/bin/env bash
# Measured study behind the README's numbers (issue 2): MAE self-pretraining on the fold-0 training images,
# then UNETR fine-tuning from scratch vs from MAE on 10% of the labels (two different 10% subsets), and one long
# full-label run; every model is evaluated on the 42 held-out fold-0 cases in their original space.
# Usage: tools/experiments/hippocampus_label_efficiency.sh [DATA_DIR] [OUT_DIR]     (about 3 h on 2 CPU cores)
set -euo pipefail
DATA=${1:-../shared/data/msd_hippocampus}
OUT=${2:-runs/label_efficiency}
COMMON=(--dataset-dir "$DATA" --fold 0 --roi-size 40 56 40 --device cpu --quiet)

volmae-pretrain "${COMMON[@]}" --out-dir "$OUT/mae60" --epochs 60 --batch-size 4 --num-samples 2 \
  --lr 1.5e-3 --warmup-epochs 5

for seed in 0 1; do
  for init in scratch mae; do
    run="$OUT/frac10_seed${seed}_${init}"
    extra=(); [ "$init" = mae ] && extra=(--pretrained "$OUT/mae60/model.pt")
    volmae-train "${COMMON[@]}" --out-dir "$run" --label-fraction 0.1 --fraction-seed "$seed" --epochs 40 \
      --batch-size 2 --num-samples 2 --lr 5e-4 --warmup-epochs 2 --val-every 0 "${extra[@]}"
    volmae-evaluate --model "$run/model.pt" --dataset-dir "$DATA" --fold 0 --out-dir "$run/eval" --device cpu --quiet
  done
done

run="$OUT/full_mae_24ep"
volmae-train "${COMMON[@]}" --out-dir "$run" --pretrained "$OUT/mae60/model.pt" --epochs 24 --batch-size 2 \
  --num-samples 2 --lr 5e-4 --warmup-epochs 1 --val-every 4
volmae-evaluate --model "$run/model.pt" --dataset-dir "$DATA" --fold 0 --out-dir "$run/eval" --device cpu --quiet
