#!/usr/bin/env bash
# The nnFormer side of the head-to-head in docs/nnformer.md (issue 4), on MSD Task04 hippocampus, fold 0 held out
# (42 cases), evaluated in each case's original voxel space. The UNETR side is tools/experiments/
# hippocampus_label_efficiency.sh (same folds, label subsets, seeds, optimiser, learning rates).
#   Budget (one CPU core per job, OMP_NUM_THREADS=1, a second job on the other core), matched in wall time:
#   - pretraining: the ViT MAE ran 100 epochs in 48 min; masked-volume pretraining of nnformer-tiny gets the same
#     ~45 min, which is 13 epochs (an nnFormer epoch costs ~3.5 min: the encoder sees every voxel, not 25 %);
#   - fine-tuning at 10 % labels: UNETR ran 40 epochs in ~20 min; an nnformer-tiny epoch costs about twice as much,
#     so it gets 20 epochs (~20 min).
# Usage: tools/experiments/nnformer_vs_unetr.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/msd_hippocampus}
OUT=${2:-runs/nnformer_vs_unetr}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C=(--dataset-dir "$DATA" --fold 0 --roi-size 48 64 48 --device cpu --quiet --preset nnformer-tiny)
evaluate() { volmae-evaluate --model "$1/model.pt" --dataset-dir "$DATA" --fold 0 --out-dir "$1/eval" --device cpu --quiet; }

volmae-pretrain "${C[@]}" --out-dir "$OUT/mvm" --epochs 13 --batch-size 4 --num-samples 1 --lr 5e-4 --warmup-epochs 1
for init in scratch mvm; do
  run="$OUT/nnf_frac10_seed0_$init"
  extra=(); [ "$init" = mvm ] && extra=(--pretrained "$OUT/mvm/model.pt")
  volmae-train "${C[@]}" --out-dir "$run" --label-fraction 0.1 --fraction-seed 0 --epochs 20 --batch-size 2 \
    --num-samples 2 --lr 5e-4 --warmup-epochs 1 --val-every 0 "${extra[@]}"
  evaluate "$run"
done
python -m volmae.evaluation.compare "$OUT/nnf_frac10_seed0_mvm/eval" "$OUT/nnf_frac10_seed0_scratch/eval"

# all 166 training labels at UNETR's long-run budget (24 epochs, ~2 h on one core; see
# hippocampus_label_efficiency.sh): nnFormer gets 13 epochs, from scratch and from the masked-volume encoder
for init in scratch mvm; do
  run="$OUT/nnf_full_${init}_13ep"
  extra=(); [ "$init" = mvm ] && extra=(--pretrained "$OUT/mvm/model.pt")
  volmae-train "${C[@]}" --out-dir "$run" --epochs 13 --batch-size 2 --num-samples 2 --lr 5e-4 --warmup-epochs 1 \
    --val-every 0 "${extra[@]}"
  evaluate "$run"
done

# cost, side by side in one run (parameters, FLOPs, training step, inference per real volume)
python benchmarks/family_cost.py --networks vit-tiny nnformer-tiny@48x64x48 --threads 1 --no-memory --out-json "$OUT/cost.json"
