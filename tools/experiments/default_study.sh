#!/usr/bin/env bash
# The label-efficiency study with volmae-study's own defaults (docs/results.md, "The default study: 400 steps"):
# MSD Task04 hippocampus, fold 0 held out (42 cases); both encoders (UNETR `vit-tiny` by masked-UNETR pretraining,
# `nnformer-tiny` by masked-volume pretraining, 30 epochs each on the 166 training images, run inside the study),
# scratch vs pretrained at 5 / 10 / 25 / 50 / 100 % labels, 400 optimizer steps per run, convergence curves at 10 %;
# then the DynUNet peer at the same 400 steps, added to the same folder. Seed 0 here (SEEDS "0 1 2" is the full
# default; a later run with more seeds extends the folder). Two one-thread workers split the runs; each phase's
# command resumes where it stopped.
# CPU_BF16=1 (the published run, on an AMD Zen 4 host) adds --cpu-bf16: every stage's network under CPU bf16
# autocast, 1.5-2.3x faster per step there (benchmarks/train_step_layout.py --threads 1); bf16 and fp32 fine-tuning
# gave equal Dice on this fold (docs/performance.md). On a CPU without AMX or AMD's avx512_bf16 leave it 0.
# Usage: tools/experiments/default_study.sh [DATA_DIR] [OUT_DIR] [SEEDS] [PUBLISH_DIR]
# PUBLISH_DIR: where to copy the study's small files (study.yaml, plan.json, report, each run's result.json,
# config.yaml, history.json and per-case eval/metrics.csv, the pretrainings' config and loss history) once it is
# done; the models stay out. `bash tools/experiments/default_study.sh DATA OUT SEEDS PUBLISH publish` copies only.
set -euo pipefail
DATA=${1:-../shared/data/msd_hippocampus}
OUT=${2:-runs/default_study}
SEEDS=${3:-0}
PUBLISH=${4:-}
ONLY=${5:-}
bf16=(); [ "${CPU_BF16:-0}" = 1 ] && bf16=(--cpu-bf16)

# shellcheck disable=SC2086  # SEEDS is a space-separated list
study() {  # $1: the peer ("none" for the encoders' phase)
  volmae-study --dataset-dir "$DATA" --out-dir "$OUT" --seeds $SEEDS --peer "$1" --device cpu "${bf16[@]}"
}
workers() {  # two one-thread processes on the folder; fails when either fails
  local pids=()
  for _ in 0 1; do OMP_NUM_THREADS=1 study "$1" & pids+=($!); sleep 20; done  # each claims its own runs
  for pid in "${pids[@]}"; do wait "$pid"; done
}
publish() {  # the finished runs' small files, and the report redone from exactly those
  [ -n "$PUBLISH" ] || return 0
  mkdir -p "$PUBLISH"
  local dest run f; dest=$(realpath "$PUBLISH")
  cp "$OUT/study.yaml" "$OUT/plan.json" "$dest/"
  for run in "$OUT"/pretrain/* "$OUT"/runs/*; do
    [ -f "$run/result.json" ] || continue  # unfinished: its partial history would read as a result
    for f in result.json config.yaml history.json eval/metrics.csv; do
      [ -f "$run/$f" ] && (cd "$OUT" && cp --parents "${run#"$OUT"/}/$f" "$dest")
    done
  done
  python -c "import sys; from volmae.study import report_study; report_study(sys.argv[1], title=sys.argv[2])" \
    "$dest" "$(basename "$DATA")" > /dev/null
}
if [ "$ONLY" != publish ]; then
  workers none     # the encoders' phase: both pretrainings first, then scratch / pretrained pairs by fraction
  workers dynunet  # the peer's phase: the same folder, the finished runs skipped; each worker ends on the report
fi
publish
