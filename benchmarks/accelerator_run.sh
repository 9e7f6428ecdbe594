#!/usr/bin/env bash
# The accelerator evidence run, in one command of at most 9 minutes on one H100 80GB:
#   FixMatch and DebiasPL (WRN-28-2, CIFAR-10, 4 labels per class, bfloat16, seed 0,
#   8,192 steps each with the cosine over them, EMA evaluation on the full test set
#   every 1,024 steps) through the real trainer, from the compact CIFAR-10 copy (no
#   TensorFlow); then the PyTorch reference step; then the trainer's throughput under
#   XLA:GPU command-buffer settings, with its host time per step; then the side-by-side
#   analysis (where matplotlib is installed). The GPU's clock, utilization and power are
#   sampled once a second throughout. Everything is written under $OUT;
#   $OUT/report.md holds the tables.
#
# Budget (seconds, one H100; each part is killed at its limit, so a slow part cannot eat
# the others; the training runs come first; measured rates: benchmarks/results/gpu.md):
#   environment check                               <= 60   (about 8)
#   train fixmatch, train debiaspl            2 x  <= 160  (about 55 start-up + compile,
#                                                           8,192 / 87 steps/s = 94)
#   PyTorch step, bf16 + channels_last              <= 35   (about 25)
#   trainer A/B: default                          <= 65   (the debiaspl run's program
#                                                           from the compilation cache,
#                                                           plus the host time per step:
#                                                           the same steps back to back,
#                                                           220 timed dispatches)
#                graphs_all, no_graphs        2 x <= 80   (compile 35-45 + 640 steps)
#                default_log512                   <= 45   (cached; metrics every 512
#                                                           steps, not 128). Each starts
#                                                           only if its limit still fits
#   PyTorch step, f32 NCHW; analysis                 what is left
#   all of it                                        <= 530 (--budget_s; the outer
#                                                           timeout below is 560)
# Why 8,192 steps and not 16,384: 2 x 16,384 steps at 87 steps/s is 377 s of stepping,
# plus 2 x 55 s of start-up and compile = 487 s of the 540, leaving no room for the A/B
# (60-70 s per cold variant). The debiaspl training run's own windows (same trainer,
# config and flags) are a second baseline beside the default variant.
#
# The accelerator machine is often a host without TensorFlow or ml_collections and
# without package-index access (a cluster node; its own python3 with jax, flax, optax,
# orbax and torch). So, first, on a machine with the prepared TFDS CIFAR-10 and the
# project's venv (make):
#   bash benchmarks/accelerator_run.sh --prepare
#     -> data/cifar10_compact.npz   (python -m dlpl_jax.compact_data; about 29 MiB)
#        .offline_packages/site/ml_collections, .offline_packages/fallback/yaml
#                                   (pure-Python packages copied from the venv)
# Both are git-ignored: copy them along with the repository to the accelerator machine,
# then run there, from the repository root:
#   OUT=/path/to/out bash benchmarks/accelerator_run.sh
# (OFFLINE_PACKAGES=DIR and DATA=FILE choose other places for --prepare to write.)
# Extra arguments go to benchmarks/accelerator_run.py (e.g. --steps, --budget_s, --ab).
# A tiny run on the CPU, through the same code paths (tests/e2e/test_accelerator_run.py):
#   PY=.venv/bin/python OUT=/tmp/acc bash benchmarks/accelerator_run.sh --tiny \
#     --steps 16 --eval_every 8 --ab_steps 256 --data PATH.npz
set -uo pipefail
if [ "${1:-}" = --prepare ]; then
  cd "$(dirname "$0")/.."
  PY=${PY:-.venv/bin/python}
  OFFLINE_PACKAGES=${OFFLINE_PACKAGES:-$PWD/.offline_packages}
  DATA=${DATA:-data/cifar10_compact.npz}
  set -e
  [ -f "$DATA" ] || "$PY" -m dlpl_jax.compact_data --out "$DATA"
  rm -rf "$OFFLINE_PACKAGES" && mkdir -p "$OFFLINE_PACKAGES/site" "$OFFLINE_PACKAGES/fallback"
  for spec in ml_collections:site yaml:fallback; do
    src=$("$PY" -c "import os, ${spec%%:*} as m; print(os.path.dirname(m.__file__))")
    cp -r "$src" "$OFFLINE_PACKAGES/${spec#*:}/"
  done
  # Pure Python only: no caches, no tests, no compiled extension of this venv's Python.
  find "$OFFLINE_PACKAGES" \( -name __pycache__ -o -name '*_test.py' -o -name '*.so' \) \
    -prune -exec rm -rf {} +
  rm -rf "$OFFLINE_PACKAGES/site/ml_collections/config_dict/examples" \
    "$OFFLINE_PACKAGES/site/ml_collections/config_flags/examples"
  du -sh "$DATA" "$OFFLINE_PACKAGES"
  echo "copy these along to the accelerator machine: $DATA $OFFLINE_PACKAGES"
  exit 0
fi
source "$(dirname "$0")/_gpu_env.sh"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/dlpl_jax_cache}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  timeout -k 10 560 "$PY" benchmarks/accelerator_run.py --out "$OUT" "$@"
  echo "exit status $?"
} 2>&1 | grep --line-buffered -v cuda_timer | tee "$OUT/accelerator_run.log"
