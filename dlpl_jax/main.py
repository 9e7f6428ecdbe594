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

from dlpl_jax import configs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None,
    "Call jax.distributed.initialize() (multi-host GPU clusters, TPU pods). Default: "
    "when JAX_COORDINATOR_ADDRESS is set or on a multi-host TPU slice.")


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
  configs.check_overrides(sys.argv[1:])
  app.run(main)


if __name__ == "__main__":
  run()
