#!/usr/bin/env bash
# One-shot GPU benchmark of the full FixMatch+DebiasPL step (WRN-28-2, B=64, mu=7 =
# 960 images/step, augmentation included) in bfloat16 and float32, for a session lent an
# H100/H200. Needs no TensorFlow. Writes $OUT/bench_bf16.json, $OUT/bench_f32.json and
# $OUT/bench.log. Expected wall time: a few minutes (two compiles + 2 x 220 steps).
#
#   bash experiments/gpu_bench.sh            # from the repo root
#
# The device image has jax/flax/optax/absl but (as of 2026-11) not ml_collections: if it
# is missing, carry its wheel in .whl/ (see /work/.library/device/README.md), e.g.
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps -d .whl ml_collections
# and name .whl in the run's carry.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dlpl_bench}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "ml_collections is missing and no .whl/ was carried" >&2; exit 2
  fi
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  for dtype in bfloat16 float32; do
    tag=$([ "$dtype" = bfloat16 ] && echo bf16 || echo f32)
    echo "== $dtype"
    "$PY" -m dlpl_jax.bench --config=experiments/cifar10_4shot.py --config.dtype=$dtype \
      --steps 200 --warmup 20 --json "$OUT/bench_$tag.json"
  done
} 2>&1 | tee "$OUT/bench.log"
