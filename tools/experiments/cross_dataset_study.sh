#!/usr/bin/env bash
# The cross-dataset checks of the label-efficiency study (docs/results.md). Each study folder first pretrains alone
# with every thread (--pretrain-only), then two one-core processes (OMP_NUM_THREADS=1) split its fine-tunes:
# 1. BraTS: vit-tiny MAE-pretrained on 1-channel MRI of *other* datasets only (MSD hippocampus, the MNI152 T1, the
#    TotalSegmentator MR example; --no-pretrain-on-dataset), fine-tuned on 2 BraTS 2013 cases (FLAIR + T1c, the
#    1-channel patch projection repeated over the 2 channels), evaluated on the other 2; fold 0 = DeepMedic's own
#    train / validation split, fold 1 the swap (the same pretraining, reused); both folds pooled in one report.
#    convert_brats zeroes DeepMedic's constant air with each case's brain mask.
# 2. CT: vit-tiny MAE-pretrained on the CT a fold does not hold out (its 2 ircadb CTs, labels unused, + the
#    TotalSegmentator CT example), fine-tuned on those 2 CTs' manual BTCV-numbered masks (each case's unmasked organs
#    handled by the marginal loss), evaluated on the third; leave-one-out over the 3 ircadb cases, pooled. The CT is
#    resampled to 3 mm (--pixdim 3 3 3, not the ct preset's 1.5 x 1.5 x 2 mm) so that a 64^3 crop spans 19 cm of
#    abdomen and several organs at once.
# ROI 64^3, one volume x 2 crops per step, 400 steps, no convergence curves (each validation would score whole
# volumes by sliding window): CPU-sized (~35 min per fine-tune on one core); the same command with
# --roi-size 96 96 96 is the GPU-sized one. The first run of these checks (2026-12-01) had 100 (BraTS) and 60 (CT)
# steps and the unmasked BraTS air; neither init learned either task then.
# The same BraTS design for the ResEnc U-Net: ENCODER=resenc-tiny CHECKS=brats (S3D instead of MAE, bf16 autocast).
# Usage: [ENCODER=vit-tiny] [CHECKS="brats ct"] tools/experiments/cross_dataset_study.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
D=$(realpath "${1:-../shared/data}")
OUT=${2:-runs/cross_dataset}
ENCODER=${ENCODER:-vit-tiny}
CHECKS=${CHECKS:-brats ct}
mkdir -p "$OUT" && cd "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
case $ENCODER in
  resenc*) M=(--methods s3d --cpu-bf16); TAG=_$ENCODER ;;
  *) M=(--methods mae); TAG= ;;
esac
study() {  # the pretraining alone with every thread, then two processes that each claim runs the other has not
  OMP_NUM_THREADS=$(nproc) volmae-study "$@" --pretrain-only > "$(mktemp -p . pretrain_XXXX.log)" 2>&1
  volmae-study "$@" > "$(mktemp -p . worker_XXXX.log)" 2>&1 & local a=$!
  sleep 10  # staggered starts: the first claims a fine-tune before the second looks
  volmae-study "$@" > "$(mktemp -p . worker_XXXX.log)" 2>&1 & local b=$!
  wait $a; wait $b
}

if [[ " $CHECKS " == *" brats "* ]]; then
# BraTS: the 4 cases as one MSD task, folds = DeepMedic's validation pair, then its train pair
mkdir -p brats_src
for c in "$D"/brats2013_deepmedic/{train,validation}/*/; do ln -sfn "$c" "brats_src/$(basename "$c")"; done
[ -f brats_task/dataset.json ] || python "$OLDPWD/tools/convert_brats.py" brats_src brats_task
echo '{"folds": [["brats_2013_pat0003_1", "brats_2013_pat0004_1"], ["brats_2013_pat0005_1", "brats_2013_pat0006_1"]]}' \
  > brats_task/splits.json
printf '%s\n' "$D/mni152_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" \
  "$D/totalseg_examples/example_mr_sm.nii.gz" > other_mri.txt
B=(--dataset-dir brats_task --preprocessing mri --roi-size 64 64 64 --encoders "$ENCODER" "${M[@]}" --peer none
   --fractions 1.0 --seeds 0 --steps 400 --batch-size 1 --curve-points 0
   --device cpu --no-pretrain-on-dataset --pretrain-epochs 8 --pretrain-sources "$D/msd_hippocampus" other_mri.txt)
study "${B[@]}" --fold 0 --out-dir brats${TAG}_f0
study "${B[@]}" --fold 1 --out-dir brats${TAG}_f1 \
  --reuse-pretraining "$ENCODER=brats${TAG}_f0/pretrain/$ENCODER/model.pt"
volmae-study "${B[@]}" --out-dir brats$TAG --report-only --pool-studies brats${TAG}_f0 brats${TAG}_f1  # pooled report
fi

if [[ " $CHECKS " == *" ct "* ]]; then
# CT: the ircadb task beside the read-only data, with leave-one-out folds
mkdir -p ircadb_task/imagesTr ircadb_task/labelsTr
cp -f "$D/ircadb01_ct/dataset.json" ircadb_task/ && chmod u+w ircadb_task/dataset.json
for c in 001 007 017; do
  ln -sfn "$D/ircadb01_ct/imagesTr/ircadb_$c.nii.gz" ircadb_task/imagesTr/
  ln -sfn "$D/ircadb01_ct/labelsTr/ircadb_$c.nii.gz" ircadb_task/labelsTr/
done
echo '{"folds": [["ircadb_001"], ["ircadb_007"], ["ircadb_017"]]}' > ircadb_task/splits.json
echo "$D/totalseg_examples/example_ct_sm.nii.gz" > other_ct.txt
C=(--dataset-dir ircadb_task --preprocessing ct --pixdim 3 3 3 --roi-size 64 64 64 --encoders "$ENCODER" "${M[@]}" --peer none
   --fractions 1.0 --seeds 0 --steps 400 --batch-size 1 --curve-points 0
   --device cpu --pretrain-sources other_ct.txt --pretrain-epochs 40 --pretrain-batch-size 2)
for f in 0 1 2; do study "${C[@]}" --fold $f --out-dir ct${TAG}_f$f; done
volmae-study "${C[@]}" --out-dir ct$TAG --report-only --pool-studies ct${TAG}_f0 ct${TAG}_f1 ct${TAG}_f2
fi
