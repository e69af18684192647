#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md came from the steps of this script,
# run on a lent GPU machine within a few minutes of device time (each run's
# exact command is kept in the results file and shown on the docs page; an
# earlier H100 session also ran many-small and the sweep up to N = 1000):
#
#     bash benchmarks/gpu_run.sh [RESULTS_DIR]
#
# It needs a Python with jax (CUDA build), optax, torch (CUDA build) and
# numpy, and gradtx importable from the repository root. Each step has its
# own time limit, and results are saved after every case, so a step cut short
# still leaves the cases it finished. Rebuild the docs page afterwards, where
# matplotlib is installed, with `python -m benchmarks --report-only`.
set -u
OUT_DIR=${1:-benchmarks/results}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
B=(-m benchmarks --results-dir "$OUT_DIR" --no-docs)

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
$PY -c "import jax, optax, torch; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'torch', torch.__version__)"

# 0. gradtx.fused_step on the GPU: the plain step (no CPU kernel), same bits.
timeout 60 $PY -m benchmarks.check_fused_platform
# 1. GPT-2-small and one-big (2^24) x the four optimizers, every contender.
timeout 170 $PY "${B[@]}" --trees gpt2-small,one-big \
    --optimizers adamw,clip_adamw,adam,sgd --rounds 10 --sample-seconds 0.1
# 2. AdamW on 2^30 parameters (16 GiB per contender: p, m, v and the gradient).
timeout 120 $PY "${B[@]}" --trees one-1b --optimizers adamw \
    --contenders gradtx,gradtx-fused,optax,torch-fused --rounds 5 --sample-seconds 0.2
# 3. ResNet-50 x AdamW, Adam and SGD.
timeout 90 $PY "${B[@]}" --trees resnet50 --optimizers adamw,adam,sgd \
    --rounds 10 --sample-seconds 0.1
# 4. 2,200 small leaves: does handing over half the buffers (gradtx-flat)
#    pay for the copies of the flat moments that the plain step makes there?
timeout 100 $PY "${B[@]}" --trees many-small --optimizers adamw \
    --rounds 5 --sample-seconds 0.1
