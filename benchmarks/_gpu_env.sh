# Sourced by benchmarks/gpu_*.sh and benchmarks/accelerator_run.sh: repo root as cwd and
# on PYTHONPATH, $OUT and $PY set, and ml_collections (plus PyYAML, which it imports)
# found without network on a host that lacks them, from the first of:
#   .carry/site/       the pure-Python packages copied from a venv that has them
#                      (bash benchmarks/accelerator_run.sh --prepare; git-ignored)
#   .whl/*.whl         a wheel downloaded beforehand (see gpu_bench.sh; git-ignored)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/dlpl_bench}
PY=${PY:-python3}
CARRY=${CARRY:-$PWD/.carry}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if [ -d "$CARRY/site/ml_collections" ]; then
    export PYTHONPATH="$PYTHONPATH:$CARRY/site"
  elif ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "ml_collections is missing and neither $CARRY/site nor .whl/ holds it" >&2; exit 2
  fi
fi
# PyYAML only where the host has none (its own, with the C loader, is preferred).
if ! "$PY" -c "import yaml" 2>/dev/null && [ -d "$CARRY/fallback/yaml" ]; then
  export PYTHONPATH="$PYTHONPATH:$CARRY/fallback"
fi
