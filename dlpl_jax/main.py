"""Command line: ``python -m dlpl_jax.main --config=experiments/X.py[:variant] --workdir=DIR``.

Intentionally short: flags, optional multi-host initialisation, one call into
:func:`dlpl_jax.trainer.train_and_evaluate`. Override any config key with
``--config.key=value`` (e.g. ``--config.method=fixmatch``); an unknown key fails at once
with the list of valid keys. Re-running the same command resumes from the latest
checkpoint in ``WORKDIR/checkpoints``.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None,
    "Call jax.distributed.initialize() (multi-host GPU clusters, TPU pods). Default: "
    "when JAX_COORDINATOR_ADDRESS is set or on a multi-host TPU slice.")


def _valid_keys(config, prefix=""):
  out = []
  for k, v in config.items():
    out.extend(_valid_keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [prefix + k])
  return out


def _load_config_file(spec: str):
  """Loads ``path[:variant]`` the way config_flags does, for the key check below."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_dlpl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def _check_overrides(argv) -> None:
  """Fails at start on an unknown --config.KEY override, listing the valid keys."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if spec is None or not keys or not os.path.exists(spec.partition(":")[0]):
    return
  valid = set(_valid_keys(_load_config_file(spec)))
  unknown = [k for k in keys if k not in valid]
  if unknown:
    raise SystemExit(f"error: unknown config key(s) {unknown}. Valid keys:\n  "
                     + "\n  ".join(sorted(valid)))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint write at INFO
  import jax  # pylint: disable=g-import-not-at-top
  multihost = _MULTIHOST.value
  if multihost is None:
    multihost = bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or (
        "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))
  if multihost:
    jax.distributed.initialize()
  from dlpl_jax import trainer  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    summary = trainer.train_and_evaluate(config, _WORKDIR.value)
  except trainer.NonFiniteLossError as e:
    print(f"[dlpl_jax] error: {e}", file=sys.stderr)
    sys.exit(1)
  except (FileNotFoundError, ValueError) as e:
    print(f"[dlpl_jax] error: {e}", file=sys.stderr)
    sys.exit(2)
  if summary.get("interrupted"):
    sys.exit(0)


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  _check_overrides(sys.argv[1:])
  app.run(main)


if __name__ == "__main__":
  run()
