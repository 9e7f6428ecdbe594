# Sourced by experiments/gpu_*.sh: repo root as cwd and on PYTHONPATH, $OUT and $PY set,
# ml_collections installed from .whl/ (see gpu_bench.sh) when the machine's python3 lacks it.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/dlpl_bench}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "ml_collections is missing and .whl/ holds no wheel for it" >&2; exit 2
  fi
fi
