#!/usr/bin/env bash
# Primus-style ViT (primus-tiny) from scratch vs MAE-pretrained as a whole network, MSD hippocampus fold 0, 5 % labels,
# 3 seeds, in the S3D study's design (docs/results.md#the-primus-style-vit-first-measurement): 400 fine-tuning steps,
# bf16 autocast on the CPU; pretraining on the fold's training images plus the other 1-channel MRI of the data folder
# (MNI152 T1, the TotalSegmentator MR example), 10 epochs; then the same at 700 steps, and primus-tiny-conv at
# 5 / 10 / 25 / 100 % labels at UNETR-Ti's compute, and primus-tiny-conv-unetr (UNETR's decoder) the same way.
# Usage: tools/experiments/primus_study.sh [OUT_DIR] [DATA_DIR]
set -euo pipefail
. "$(dirname "$(realpath "$0")")/workers.sh"  # two_workers
DATA=$(realpath "${2:-../shared/data}")
D=$DATA/msd_hippocampus
OUT=${1:-runs/primus_study}; mkdir -p "$OUT" && cd "$OUT"
printf '%s\n' "$DATA/mni152_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" \
  "$DATA/totalseg_examples/example_mr_sm.nii.gz" > other_mri.txt
date
volmae-study --dataset-dir "$D" --out-dir study --encoders primus-tiny --steps 400 --cpu-bf16 --pretrain-epochs 10 \
  --pretrain-sources other_mri.txt --device cpu --peer none --fractions 0.05 --seeds 0 1 2 > study1.log 2>&1
date
# the same at 700 steps (UNETR-Ti's 400-step compute by the measured step-cost ratio), the pretraining reused
volmae-study --dataset-dir "$D" --out-dir study700 --encoders primus-tiny --steps 700 --cpu-bf16 --pretrain-epochs 10 \
  --pretrain-sources other_mri.txt --device cpu --peer none --fractions 0.05 --seeds 0 1 2 \
  --reuse-pretraining primus-tiny=study/pretrain/primus-tiny/model.pt > study700.log 2>&1
date
# primus-tiny-conv (the conv tokenizer the training-side search chose) at 5 / 10 / 25 / 100 % labels, 740 steps: UNETR-Ti's
# 400-step compute by the measured step-cost ratio (0.412 / 0.766 s, benchmarks/results/family_cost_primus_conv_cpu_bf16.md);
# two one-thread workers on one folder (at 5 / 10 % the first pretrains while the second fine-tunes the scratch runs)
CONV=(--dataset-dir "$D" --out-dir study_conv --encoders primus-tiny-conv --steps 740 --cpu-bf16 --pretrain-epochs 10
      --pretrain-sources other_mri.txt --device cpu --peer none --seeds 0 1 2)
two_workers conv1 "${CONV[@]}" --fractions 0.05 0.1
date
two_workers conv2 "${CONV[@]}" --fractions 0.25 1.0
date
# primus-tiny-conv-unetr (that encoder under UNETR's decoder) in UNETR-Ti's own design of the default study: the whole
# UNETR pretrained by masked-volume reconstruction, 30 epochs on the fold's images (the study's default pretraining);
# 355 steps = UNETR-Ti's 400-step compute by the measured step-cost ratio (0.925 / 0.820 s,
# benchmarks/results/family_cost_primus_unetr_cpu_bf16.md)
UNETR=(--dataset-dir "$D" --out-dir study_unetr --encoders primus-tiny-conv-unetr --steps 355 --cpu-bf16
       --pretrain-epochs 30 --device cpu --peer none --seeds 0 1 2)
two_workers unetr1 "${UNETR[@]}" --fractions 0.05 0.1
date
two_workers unetr2 "${UNETR[@]}" --fractions 0.25 1.0
date
