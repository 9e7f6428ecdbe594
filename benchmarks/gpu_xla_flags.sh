#!/usr/bin/env bash
# A/B of XLA:GPU command-buffer (CUDA graph) settings on the bf16 train step, on one
# GPU (about 4 minutes). Why: on an H100 the step runs 13.4 ms when each
# step is synced and 10.5 ms back to back, and the trainer 7-14% under the latter
# (benchmarks/results/gpu.md): host launch cost is the suspect, and command buffers
# bear on it. Prints one "train" block per variant; JSON in $OUT/xla_<name>.json.
# A cold bench run takes ~60-70 s (compile 30-35 s + autotuning + start-up): the
# per-run timeout below leaves room (60 s is too short).
# The same variants through the real trainer (steps/s per logging window) are part of
# benchmarks/accelerator_run.sh, which also runs the training evidence in one go.
#   bash benchmarks/gpu_xla_flags.sh       (ml_collections: see benchmarks/_gpu_env.sh)
set -uo pipefail
source "$(dirname "$0")/_gpu_env.sh"
run() {  # name, XLA_FLAGS
  echo "== $1: XLA_FLAGS='$2'"
  XLA_FLAGS="$2" timeout 150 "$PY" -m dlpl_jax.bench --config=experiments/cifar10_4shot.py \
    --config.dtype=bfloat16 --steps 200 --warmup 20 --json "$OUT/xla_$1.json" \
    2>&1 | grep -v cuda_timer
}
{
  nvidia-smi --query-gpu=name --format=csv,noheader
  run default ""
  run graphs_all "--xla_gpu_graph_min_graph_size=1 --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"
  run no_graphs "--xla_gpu_enable_command_buffer="
} 2>&1 | tee "$OUT/xla_flags.log"
