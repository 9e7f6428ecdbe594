# Sourced by benchmarks/gpu_*.sh and benchmarks/accelerator_run.sh: repo root as cwd and
# on PYTHONPATH, $OUT and $PY set, and ml_collections (plus PyYAML, which it imports)
# found on a host that lacks them and has no package-index access, from the first of:
#   .offline_packages/site/   the pure-Python packages copied from a venv that has them
#                             (bash benchmarks/accelerator_run.sh --prepare; git-ignored;
#                             OFFLINE_PACKAGES=DIR names another folder)
#   .whl/*.whl                a wheel downloaded beforehand (see gpu_bench.sh; git-ignored)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/dlpl_bench}
PY=${PY:-python3}
OFFLINE_PACKAGES=${OFFLINE_PACKAGES:-$PWD/.offline_packages}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if [ -d "$OFFLINE_PACKAGES/site/ml_collections" ]; then
    export PYTHONPATH="$PYTHONPATH:$OFFLINE_PACKAGES/site"
  elif ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "ml_collections is missing and neither $OFFLINE_PACKAGES/site nor .whl/ holds it" \
      "(bash benchmarks/accelerator_run.sh --prepare makes the first)" >&2; exit 2
  fi
fi
# PyYAML only where the host has none (its own, with the C loader, is preferred).
if ! "$PY" -c "import yaml" 2>/dev/null && [ -d "$OFFLINE_PACKAGES/fallback/yaml" ]; then
  export PYTHONPATH="$PYTHONPATH:$OFFLINE_PACKAGES/fallback"
fi
