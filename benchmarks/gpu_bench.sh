#!/usr/bin/env bash
# One-shot GPU measurement on one GPU (H100/H200: about 5 minutes):
#   1. dlpl_jax.bench: the full FixMatch+DebiasPL step (WRN-28-2, B=64, mu=7 = 960
#      images/step, augmentation included), bfloat16 then float32;
#   2. the PyTorch reference step (benchmarks/torch_reference_step.py) on the same GPU:
#      f32 NCHW (the references as written) and bf16 autocast + channels_last;
#   3. the real trainer (benchmarks/trainer_throughput.py): bf16, 2048 steps with
#      logging, two evaluations and two checkpoints, on synthetic data.
# Needs no TensorFlow. Writes $OUT/*.json and $OUT/gpu_bench.log.
#
#   bash benchmarks/gpu_bench.sh            # from the repo root
#
# It uses the machine's own python3 (PY=... overrides), which needs jax, flax, optax,
# orbax, absl and torch. On a host without ml_collections and without package-index
# access, benchmarks/_gpu_env.sh takes it from .offline_packages/ (written by
# `bash benchmarks/accelerator_run.sh --prepare` on a machine that has it) or installs
# its wheel from .whl/ at the repository root (git-ignored), downloaded beforehand on a
# machine with package-index access:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
set -uo pipefail
source "$(dirname "$0")/_gpu_env.sh"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv,noheader || true
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())"
  for dtype in bfloat16 float32; do
    tag=$([ "$dtype" = bfloat16 ] && echo bf16 || echo f32)
    echo "== dlpl_jax.bench $dtype"
    timeout 150 "$PY" -m dlpl_jax.bench --config=experiments/cifar10_4shot.py \
      --config.dtype=$dtype --steps 200 --warmup 20 --json "$OUT/bench_$tag.json"
  done
  echo "== PyTorch reference step (no augmentation), f32 NCHW"
  timeout 90 "$PY" benchmarks/torch_reference_step.py --device cuda --steps 100 --warmup 20
  echo "== PyTorch reference step (no augmentation), bf16 autocast, channels_last"
  timeout 90 "$PY" benchmarks/torch_reference_step.py --device cuda --steps 100 --warmup 20 \
    --bf16 --channels_last
  echo "== trainer, bf16, 2048 steps"
  timeout 180 "$PY" -m benchmarks.trainer_throughput --dtype bfloat16 --steps 2048 \
    --workdir /tmp/trainer_throughput
} 2>&1 | tee "$OUT/gpu_bench.log"
