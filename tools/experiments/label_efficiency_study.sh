#!/usr/bin/env bash
# The published label-efficiency study (docs/results.md) on MSD Task04 hippocampus, fold 0 held out (42 cases):
# UNETR (vit-tiny) from scratch vs from masked-UNETR pretraining, and the DynUNet peer from scratch, at 5 / 10 / 25 %
# of the 166 training labels x 2 seeds (label subsets), 100 optimizer steps per run; convergence curves at 10 %.
# Two processes, one core each, share the study folder; rerun the same line to resume.
# Usage: tools/experiments/label_efficiency_study.sh [DATA_DIR] [OUT_DIR] [PRETRAINED]
# PRETRAINED: an existing `volmae-pretrain --preset vit-tiny --method masked-unetr --epochs 30 --batch-size 4
# --num-samples 1 --lr 5e-4 --warmup-epochs 2 --roi-size 40 56 40 --fold 0` model.pt, which is what the study runs
# itself without --reuse-pretraining (2 h 11 min on one core); leave it empty to pretrain inside the study.
set -euo pipefail
DATA=${1:-../shared/data/msd_hippocampus}
OUT=${2:-runs/label_efficiency_study}
PRE=${3:-}
reuse=(); [ -n "$PRE" ] && reuse=(--reuse-pretraining "vit-tiny=$PRE")
mkdir -p "$(dirname "$OUT")"
for worker in 0 1; do
  OMP_NUM_THREADS=1 volmae-study --dataset-dir "$DATA" --out-dir "$OUT" --encoders vit-tiny --peer dynunet \
    --fractions 0.05 0.1 0.25 --seeds 0 1 --steps 100 --curve-fractions 0.1 --curve-points 8 --curve-cases 10 \
    --device cpu "${reuse[@]}" > "$OUT.worker$worker.log" 2>&1 &
  sleep 20  # the first worker writes study.yaml / plan.json
done
wait
volmae-study --dataset-dir "$DATA" --out-dir "$OUT" --encoders vit-tiny --peer dynunet --fractions 0.05 0.1 0.25 \
  --seeds 0 1 --steps 100 --curve-fractions 0.1 --curve-points 8 --curve-cases 10 --device cpu "${reuse[@]}" \
  --report-only
# The full default study (both encoders, 5 / 10 / 25 / 50 / 100 %, 3 seeds) is the same command without
# --encoders / --fractions / --seeds; its finished runs here are kept (fractions, seeds and encoders may grow).
# The nnFormer arm of the published run (10 %, reusing the 13-epoch masked-volume pretraining of docs/nnformer.md;
# NNF_PRE = that model.pt), added to the same folder:
#   volmae-study --dataset-dir "$DATA" --out-dir "$OUT" --encoders vit-tiny nnformer-tiny --peer dynunet \
#     --fractions 0.1 --seeds 0 1 --steps 100 --curve-fractions 0.1 --curve-points 8 --curve-cases 10 --device cpu \
#     --reuse-pretraining "vit-tiny=$PRE" "nnformer-tiny=$NNF_PRE"
# Of the 25 % runs the published report holds UNETR only (DynUNet at 25 % did not run for CPU time). Its UNETR pairs
# at 25 / 50 / 100 % (seeds 0 1) train exactly 100 steps: they were (re)run into the same folder, after moving the
# epoch-rounded 25 / 50 / 100 % runs of an earlier volmae out of it, with:
#   volmae-study --dataset-dir "$DATA" --out-dir "$OUT" --encoders vit-tiny --peer none --fractions 0.25 0.5 1.0 \
#     --seeds 0 1 --steps 100 --curve-fractions 0.1 --curve-points 8 --curve-cases 10 --device cpu "${reuse[@]}"
# The 5 % runs are exactly what this volmae trains (25 epochs of 4 steps). Added next: the DynUNet peer at 100 %
# (--peer dynunet --fractions 1.0 --seeds 0) and a third seed at 5 % (--peer none --fractions 0.05 --seeds 2), the
# same command otherwise. Last (2026-12-02), the UNETR 10 % pairs, which had trained 99 steps (11 whole epochs of 9),
# were rerun at 100 after moving their folders out, and the third seed added from 10 % up (two workers):
#   volmae-study ... --encoders vit-tiny --peer none --fractions 0.1 --seeds 0 1 2 --steps 100 ...
#   volmae-study ... --encoders vit-tiny --peer none --fractions 0.25 0.5 1.0 --seeds 2 --steps 100 ...
# Then (2026-12-02, on a machine without the study's pretrainings) the DynUNet peer alone, into the same folder:
# 25 / 50 % and 100 % seed 1 and 5 % seed 2 added, and its 10 % seeds 0 and 1, which had trained 99 steps, rerun at
# 100 after moving their folders out (one line per core):
#   volmae-study ... --encoders none --peer dynunet --fractions 0.25 --seeds 0 1 --steps 100 ...
#   volmae-study ... --encoders none --peer dynunet --fractions 0.5 --seeds 0 1 --steps 100 ...
#   volmae-study ... --encoders none --peer dynunet --fractions 1.0 --seeds 1 --steps 100 ...   (then 0.05, seed 2)
#   volmae-study ... --encoders none --peer dynunet --fractions 0.1 --seeds 0 1 --steps 100 ...
# The nnFormer 10 % runs kept from the earlier volmae trained 99 steps.
