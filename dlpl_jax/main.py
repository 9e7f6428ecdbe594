"""Trains a FixMatch / DebiasPL run: the dlpl-train command, what `make train` runs.

  python -m dlpl_jax.main --config=FILE[:VARIANT] [--workdir=DIR] [--config.KEY=VALUE ...]

FILE is an experiment config such as experiments/cifar10_4shot.py, VARIANT a comma-
separated list such as smoke or fixmatch,smoke; --config.KEY=VALUE overrides one value
(an unknown key fails at once, naming the nearest valid ones). Running the same command
again resumes from the latest checkpoint. Ctrl-C or SIGTERM stops after the current step
and saves a checkpoint; a second one aborts at once.

Exit status: 0 when the run finished, or stopped with a checkpoint saved; 2 when it
cannot start as asked (config, flags, data, workdir); 1 when training failed
(non-finite values, a checkpoint that cannot be written); 130 / 143 when a second
SIGINT / SIGTERM aborted it.
"""

from __future__ import annotations

import os
import re
import sys
import types

from dlpl_jax import configs
from dlpl_jax import errors
from dlpl_jax import host
from dlpl_jax.errors import RunError, UsageError
from dlpl_jax.training import interrupt


def _define_flags() -> types.SimpleNamespace:
  """The command's absl flags (absl and ml_collections come with the train extra)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return types.SimpleNamespace(
      config=config_flags.DEFINE_config_file(
          "config", None, "The experiment config: FILE[:VARIANT], e.g. "
          "experiments/cifar10_4shot.py:smoke; override its values with "
          "--config.KEY=VALUE.", lock_config=True),
      workdir=flags.DEFINE_string(
          "workdir", None, "Run folder (checkpoints, metrics). Default: runs/NAME, NAME "
          "made of the config file, its variant and the --config.* overrides, so that "
          "different commands never share a folder."),
      multihost=flags.DEFINE_bool(
          "multihost", None, "Call jax.distributed.initialize() (multi-host GPU clusters, "
          "TPU pods). Default: when JAX_COORDINATOR_ADDRESS is set, on a multi-host TPU "
          "slice, and in a SLURM step or Open MPI job of several tasks."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, "With --multihost outside SLURM/Open MPI/Kubernetes/TPU "
          "(whose environment JAX reads): the number of processes (default: "
          "$DLPL_NUM_PROCESSES)."),
      process_id=flags.DEFINE_integer(
          "process_id", None, "With --multihost outside a detected cluster: this "
          "process's index, 0 runs the coordinator at JAX_COORDINATOR_ADDRESS (default: "
          "$DLPL_PROCESS_ID)."),
      heartbeat_timeout=flags.DEFINE_integer(
          "heartbeat_timeout", 100, "Several processes: seconds without a heartbeat after "
          "which the others give up on a process that died or hangs."),
      allow_config_change=flags.DEFINE_bool(
          "allow_config_change", False, "Resume a stored run although the config now "
          "differs in keys that change training (recorded in "
          "WORKDIR/config_changes.jsonl)."),
      restore_step=flags.DEFINE_integer(
          "restore_step", None, "Resume from this checkpoint step instead of the latest; "
          "newer checkpoints are moved to WORKDIR/checkpoints/set_aside/."),
      allow_cpu=flags.DEFINE_bool(
          "allow_cpu", False, "Start a run that would take more than 12 hours on a "
          "CPU-only host."))


_FLAGS = None
_STOP = interrupt.StopSignal()


def default_workdir(argv: list[str]) -> str:
  """``runs/<config file>[-<variant>][-<overrides>]`` from the command line.

  Examples:
    >>> default_workdir(["--config=experiments/cifar10_4shot.py:smoke",
    ...                  "--config.method=fixmatch", "--config.seed=1"])
    'runs/cifar10_4shot-smoke-method=fixmatch,seed=1'
  """
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "run")
  path, _, variant = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  overrides = sorted(a[len("--config."):] for a in argv if a.startswith("--config."))
  for part in (variant, ",".join(overrides)):
    if part:
      name += "-" + re.sub(r"[^A-Za-z0-9._=,+-]", "_", part)
  return os.path.join("runs", name[:200])


def _fail(e: Exception, code: int) -> None:
  errors.report(e, code)
  if _multiprocess():
    # Skip jax.distributed's exit barrier: it would hold this process until the others
    # finish or its shutdown timeout (300 s) ends, while they wait for this one in their
    # next collective. Exiting now makes their collectives fail at once instead.
    sys.stdout.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _multiprocess() -> bool:
  jax = sys.modules.get("jax")
  return jax is not None and jax.distributed.is_initialized()


def auto_multihost(environ) -> bool:
  """Whether this process is one of several of a run, from the environment alone:
  JAX_COORDINATOR_ADDRESS set, a multi-host TPU slice, or a SLURM step / Open MPI job of
  more than one task (whose variables jax.distributed reads)."""
  several = lambda name: int(v) > 1 if (v := environ.get(name, "")).isdigit() else False
  return (bool(environ.get("JAX_COORDINATOR_ADDRESS"))
          or "," in environ.get("TPU_WORKER_HOSTNAMES", "")
          or ("SLURM_STEP_NODELIST" in environ and several("SLURM_NTASKS"))
          or several("OMPI_COMM_WORLD_SIZE"))


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value else None


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint write at INFO
  import jax  # pylint: disable=g-import-not-at-top
  f = _FLAGS
  multihost = f.multihost.value
  if multihost is None:
    multihost = auto_multihost(os.environ)
  if multihost:
    # JAX's preemption service would take SIGTERM from the handler installed at start
    # (its C++ notifier replaces it): the run would ignore SIGTERM. The trainer agrees on
    # a stop across processes itself.
    jax.config.update("jax_enable_preemption_service", False)
    try:
      jax.distributed.initialize(
          num_processes=f.num_processes.value or _env_int("DLPL_NUM_PROCESSES"),
          process_id=(f.process_id.value if f.process_id.value is not None
                      else _env_int("DLPL_PROCESS_ID")),
          heartbeat_timeout_seconds=f.heartbeat_timeout.value)
    except ValueError as e:  # no coordinator address / process count / id found
      _fail(UsageError(f"--multihost: {e} (outside a detected cluster set "
                       "JAX_COORDINATOR_ADDRESS, --num_processes and --process_id)"),
            UsageError.exit_code)
    if jax.process_index() != 0:
      # Process 0 reports for the run; the others print errors only (stderr). Their
      # stdout, where libraries print (Gloo's connection notice), goes to /dev/null.
      sys.stdout.flush()
      os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
  from dlpl_jax.training import loop  # pylint: disable=g-import-not-at-top
  workdir = f.workdir.value or default_workdir(sys.argv[1:])
  try:
    loop.train_and_evaluate(
        f.config.value, workdir, allow_config_change=f.allow_config_change.value,
        restore_step=f.restore_step.value, allow_cpu=f.allow_cpu.value, stop=_STOP)
  except (UsageError, FileNotFoundError) as e:  # includes bad data (DataError)
    _fail(e, UsageError.exit_code)
  except RunError as e:  # includes NonFiniteLossError
    _fail(e, RunError.exit_code)
  except OSError as e:  # a filesystem failure during the run: one line, not a traceback
    _fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
          RunError.exit_code)
  except jax.errors.JaxRuntimeError as e:
    if not _multiprocess():
      raise
    # A collective failed: another process died (its own error is in its log).
    _fail(f"{str(e).splitlines()[0]} (another process of this run probably failed or was "
          "killed: see its output); the latest complete checkpoint is intact",
          RunError.exit_code)
  except Exception:  # pylint: disable=broad-except
    if not _multiprocess():
      raise
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    _fail("training failed (traceback above)", RunError.exit_code)


def run():
  """The ``dlpl-train`` command."""
  global _FLAGS
  _STOP.__enter__()  # first: a signal during start-up is acknowledged and handled
  host.configure()   # before JAX starts: the XLA:CPU flag
  try:
    errors.require("train", "absl", "ml_collections", "orbax")
  except UsageError as e:
    _fail(e, UsageError.exit_code)
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  flags.mark_flags_as_required(["config"])
  sys.modules["__main__"].__doc__ = __doc__  # --help shows this, also as dlpl-train
  try:
    configs.check_overrides(sys.argv[1:])
  except UsageError as e:
    _fail(e, UsageError.exit_code)
  app.run(main, flags_parser=errors.parse_absl_flags)


if __name__ == "__main__":
  run()
