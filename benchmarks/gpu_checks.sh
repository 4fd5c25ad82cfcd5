#!/usr/bin/env bash
# The GPU checks in one command, for a lent GPU machine (an H100 / H200 with torch, without
# MONAI or nibabel, without ../shared/data and without internet): the CUDA-only tests (tests/gpu), the MAE
# pretraining step against MONAI's MaskedAutoEncoderViT (ViT-B/16 at 96^3; batch 2 for the ratio, batch 32 for the
# FLOP rate), sliding-window inference of the 512 x 512 x 200 CT, a whole volmae-infer run on it, and the training
# step time and peak memory of each network family at its hippocampus ROI (benchmarks/family_cost.py). Each step has
# its own time limit, so a slow or failing one leaves the rest and its partial output in steps.log; about 9 minutes.
#
# Prepare on this machine, in the repo root (wheels of the two pure-Python packages the device lacks; .gitignore
# keeps .whl/ out of the repository):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl monai==1.6.1 nibabel==5.4.2
# then through the device tool: run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=600).
# What it writes comes back from $OUT (6 files: env.txt, steps.log with every step's output, 4 JSON; 8 is the
# limit); commit the figures under benchmarks/results/ with this command. A dry run of the plumbing on the CPU, at
# toy sizes:
#   OUT=/tmp/gpu_dry DEVICE=cpu PYTHON=.venv/bin/python MAE_CONFIGS=vit-tiny:40x56x40:2 SHAPE="96 96 96" \
#       FAMILIES="vit-tiny primus-tiny" bash benchmarks/gpu_checks.sh
set -uo pipefail
out=${OUT:-benchmarks/results/gpu}
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}
read -r -a configs <<<"${MAE_CONFIGS:-vit-base:96:2 vit-base:96:32}"
read -r -a shape <<<"${SHAPE:-512 512 200}"
read -r -a families <<<"${FAMILIES:-vit-tiny nnformer-tiny@48x64x48 resenc-tiny primus-tiny primus-tiny-conv \
primus-tiny-conv-unetr dynunet}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
        exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

step() { # step NAME LIMIT_S COMMAND...: run it under a time limit, its output to the screen and $out/steps.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s): $*" | tee -a "$out/steps.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/steps.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/steps.log"
}

{
    nvidia-smi || true
    "$py" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"
    echo "git $(git rev-parse HEAD 2>/dev/null || echo '(no git)'); configs ${configs[*]}; shape ${shape[*]}"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
step tests 100 "$py" -m pytest -q -p no:cacheprovider tests/gpu
step mae_step 250 "$py" benchmarks/mae_step.py --device "$dev" --config "${configs[@]}" --rounds 1 --steps 10 \
    --paired-steps 0 --out-json "$out/mae_step_gpu.json"
step sliding_window 120 "$py" benchmarks/sliding_window.py --device "$dev" --shape "${shape[@]}" \
    --out-json "$out/sliding_window_gpu.json"
step infer 70 "$py" benchmarks/infer_large_ct.py --device "$dev" --shape "${shape[@]}" --spacing 1.5 1.5 2 --no-real \
    --out-json "$out/infer_gpu.json"
step family_cost 90 "$py" benchmarks/family_cost.py --device "$dev" --networks "${families[@]}" --repeats 10 \
    --warmup 3 --out-json "$out/family_cost_gpu.json"
