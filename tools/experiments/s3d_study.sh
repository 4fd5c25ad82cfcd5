#!/usr/bin/env bash
# S3D-pretrained vs scratch ResEnc U-Net (resenc-tiny) on MSD hippocampus fold 0, then nnU-Net v2 at equal minutes
# (docs/results.md#the-residual-encoder-cnn-and-s3d-pretraining). Pretraining: the fold's training images plus the
# other 1-channel MRI of the data folder (MNI152 T1, the TotalSegmentator MR example), 10 epochs. Fine-tuning: 400
# steps, bf16 autocast on the CPU. nnU-Net v2 in its own environment (NNUNET_PYTHON), 1x = the mean training minutes
# of the two volmae runs of the same fraction and seed, and 4x that.
# Usage: NNUNET_PYTHON=~/nnunet-env/bin/python tools/experiments/s3d_study.sh [OUT_DIR] [DATA_DIR]
set -euo pipefail
. "$(dirname "$(realpath "$0")")/workers.sh"  # two_workers
DATA=$(realpath "${2:-../shared/data}")
D=$DATA/msd_hippocampus
OUT=${1:-runs/s3d_study}; mkdir -p "$OUT" && cd "$OUT"
printf '%s\n' "$DATA/mni152_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" \
  "$DATA/totalseg_examples/example_mr_sm.nii.gz" > other_mri.txt
C=(--dataset-dir $D --out-dir study --encoders resenc-tiny --steps 400 --cpu-bf16 --pretrain-epochs 10
   --pretrain-sources other_mri.txt --device cpu)
date
volmae-study "${C[@]}" --peer none --fractions 0.05 --seeds 0 1 2 > study1.log 2>&1
date
volmae-study "${C[@]}" --peer none --fractions 0.1 --seeds 0 1 2 > study2.log 2>&1
date
volmae-study "${C[@]}" --peer nnunet --nnunet-budgets 1x --fractions 0.05 0.1 --seeds 0 1 2 \
  --nnunet-python "${NNUNET_PYTHON:?set NNUNET_PYTHON to a Python with nnunetv2}" > study3.log 2>&1
date
# 25 % and all labels: two one-thread processes side by side
two_workers study4 "${C[@]}" --peer none --fractions 0.25 1.0 --seeds 0 1 2
date
# nnU-Net at 4x the volmae runs' minutes (minutes on this machine: run it where the 5 / 10 % runs ran)
volmae-study "${C[@]}" --peer nnunet --nnunet-budgets 4x --fractions 0.05 0.1 --seeds 0 1 2 \
  --nnunet-python "$NNUNET_PYTHON" > study5.log 2>&1
date
# nnU-Net at the 25 / 100 % runs' minutes, run as those ran: two one-thread processes side by side
two_workers study6 "${C[@]}" --peer nnunet --nnunet-budgets 1x --fractions 0.25 1.0 --seeds 0 1 2 \
  --nnunet-python "$NNUNET_PYTHON"
date
# S3D pretraining three times as long, 5 and 10 % labels, in its own folder; its scratch runs are the ones above (copied in,
# so that only the pretraining and the pretrained fine-tunes run)
mkdir -p study_pre30/runs && cp -r study/runs/resenc-tiny_scratch_5pct_s* study_pre30/runs/
volmae-study "${C[@]}" --out-dir study_pre30 --pretrain-epochs 30 --peer none --fractions 0.05 --seeds 0 1 2 \
  > study7.log 2>&1
date
# the same pretraining at 10 % labels (scratch runs copied in), two one-thread workers
cp -r study/runs/resenc-tiny_scratch_10pct_s* study_pre30/runs/
two_workers study8 "${C[@]}" --out-dir study_pre30 --pretrain-epochs 30 --peer none --fractions 0.1 --seeds 0 1 2
date
