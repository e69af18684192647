#!/usr/bin/env bash
# The harness on a GPU, within a few minutes of device time:
#
#     bash benchmarks/gpu_run.sh [RESULTS_DIR]
#
# It needs jax and torch with CUDA, optax, and gradtx importable from the
# repository root. Each step has its own time limit and the harness saves
# after every case, so a step cut short keeps the cases it finished. Rebuild
# the page afterwards with `python -m benchmarks --report-only`.
set -u
OUT_DIR=${1:-benchmarks/results}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
B=(-m benchmarks --results-dir "$OUT_DIR" --no-docs --rounds 10 --sample-seconds 0.1)

# fused_step on a GPU must be the plain step, bit for bit.
timeout 60 $PY -m benchmarks.check_fused_platform
timeout 150 $PY "${B[@]}" --trees gpt2-small,one-big
timeout 100 $PY "${B[@]}" --trees resnet50
# many-small compiles for about a minute per JAX library on a GPU.
timeout 200 $PY "${B[@]}" --trees many-small --optimizers adamw
# 16 GiB per library (p, m, v and the gradient): too many for every library.
timeout 120 $PY "${B[@]}" --trees one-1b --optimizers adamw \
    --libraries copy,gradtx,optax,torch-fused --rounds 5 --sample-seconds 0.2
