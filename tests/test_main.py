"""dlpl_jax.main without training: the default run folder, the detection of several
processes, and the command's one-line usage errors and exit statuses.

The command lines run in ONE subprocess: it imports the command once, then runs each
command line in a forked child of its own (fresh flags, its own exit status, stdout and
stderr), as ``python -m dlpl_jax.main ARGS`` would. The runs on real data (training,
resume, signals, missing data, the full config on a CPU) are in
tests/e2e/test_command_line.py.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from dlpl_jax import main

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "experiments/cifar10_4shot.py:smoke"


# --- default_workdir ------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    ([f"--config={SMOKE}"], "runs/cifar10_4shot-smoke"),
    (["--config=experiments/cifar10_4shot.py"], "runs/cifar10_4shot"),
    (["--config=experiments/cifar10_4shot.py:fixmatch,smoke"],
     "runs/cifar10_4shot-fixmatch,smoke"),
    # overrides sorted, whatever their order on the command line; other flags ignored
    ([f"--config={SMOKE}", "--config.seed=1", "--allow_cpu", "--config.method=fixmatch"],
     "runs/cifar10_4shot-smoke-method=fixmatch,seed=1"),
    (["--config=experiments/cifar10_4shot.py", "--config.lr=0.1"],
     "runs/cifar10_4shot-lr=0.1"),
    # characters that do not belong in a folder name become '_'
    ([f"--config={SMOKE}", "--config.data_dir=/d/x y.npz"],
     "runs/cifar10_4shot-smoke-data_dir=_d_x_y.npz"),
    (["--workdir=/tmp/x"], "runs/run"),  # no --config: the flag parser reports that
])
def test_default_workdir_is_named_after_the_command(argv, expected):
  assert main.default_workdir(argv) == expected


def test_default_workdirs_of_different_commands_differ_and_stay_short():
  base = [f"--config={SMOKE}"]
  names = {main.default_workdir(base + extra) for extra in (
      [], ["--config.method=fixmatch"], ["--config.method=debiaspl"], ["--config.seed=1"])}
  assert len(names) == 4
  long = main.default_workdir(base + [f"--config.data_dir=/{'d' * 500}"])
  assert long.startswith("runs/cifar10_4shot-smoke-data_dir=") and len(long) == 5 + 200


# --- auto_multihost ---------------------------------------------------------------------


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"JAX_COORDINATOR_ADDRESS": "host0:1234"}, True),
    ({"JAX_COORDINATOR_ADDRESS": ""}, False),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, False),  # a single-host TPU VM
    ({"SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16"}, True),
    ({"SLURM_STEP_NODELIST": "gpu01", "SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "16"}, False),  # an allocation, outside an srun step
    ({"SLURM_STEP_NODELIST": "gpu01", "SLURM_NTASKS": "x"}, False),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, False),
])
def test_several_processes_are_detected_from_the_environment(environ, expected):
  assert main.auto_multihost(environ) is expected


# --- the command line: usage errors ------------------------------------------------------

# Runs each command line of argv[1] (a JSON list of argument lists) in a forked child of
# one process that imported the command once; prints [[status, stdout, stderr], ...].
RUNNER = textwrap.dedent("""
    import json, os, sys, traceback
    from dlpl_jax import main
    import absl.app, ml_collections.config_flags  # noqa: F401  (imported once, shared)
    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    results = []
    for i, argv in enumerate(cases):
      paths = [os.path.join(out, f"{i}.{s}") for s in ("stdout", "stderr")]
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:  # the child: `python -m dlpl_jax.main *argv`
        for fd, path in zip((1, 2), paths):
          os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["dlpl_jax.main", *argv]
        try:
          main.run()
          code = 0
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
          if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
        except BaseException:  # as the interpreter would: the traceback, status 1
          traceback.print_exc()
          code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
      _, status = os.waitpid(pid, 0)
      results.append([os.waitstatus_to_exitcode(status)]
                     + [open(p, encoding="utf-8").read() for p in paths])
    print(json.dumps(results))
    """)

# (arguments after --workdir, the exit status, a text of stderr (stdout for --help),
# the most lines stderr may have)
CASES = {
    "unknown key": (["--config.totl_steps=3"], 2,
                    "unknown config key 'totl_steps'; did you mean 'total_steps'?", 2),
    "bad type": (["--config.total_steps=abc"], 2, "total_steps", 2),
    "bad value": (["--config.lr=-1"], 2, "bad config: lr must be a finite number > 0, got -1",
                  2),
    "bad flag": (["--restore_step=x"], 2, "restore_step", 2),
    "no config file": (["--config=experiments/nope.py", "--config.lr=0.1"], 2,
                       "config file 'experiments/nope.py' does not exist", 1),
    "no variant": (["--config=experiments/cifar10_4shot.py:smok", "--config.lr=0.1"], 2,
                   "unknown variant 'smok'", 1),
    "help": (["--help"], 0, "--config", None),
    "no --config": ([], 2, "[dlpl_jax] error: flag --config", 1),
}


@pytest.fixture(scope="module")
def command_lines(tmp_path_factory):
  """name -> (exit status, stdout, stderr) of each command line in CASES."""
  tmp = tmp_path_factory.mktemp("main")
  argvs = []
  for name, (args, *_) in CASES.items():
    config = [] if name in ("no --config", "help") or any(
        a.startswith("--config=") for a in args) else [f"--config={SMOKE}"]
    argvs.append(config + [f"--workdir={tmp / 'w'}"] * (name != "help") + args)
  res = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argvs), str(tmp)],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert res.returncode == 0, res.stderr[-3000:]
  results = json.loads(res.stdout.strip().splitlines()[-1])
  assert not (tmp / "w").exists()  # no command created its run folder
  return dict(zip(CASES, results))


@pytest.mark.parametrize("name", list(CASES))
def test_usage_errors_are_one_line_with_status_2(command_lines, name):
  _, status, text, max_lines = CASES[name]
  code, out, err = command_lines[name]
  assert code == status, err[-2000:]
  assert "Traceback" not in err
  if status == 0:  # --help: the usage on stdout, status 0 (absl's own is 1)
    assert text in out, (out[-2000:], err[-2000:])
    return
  assert text in err, err[-2000:]
  lines = err.strip().splitlines()
  assert 1 <= len(lines) <= max_lines, err
  assert lines[0].startswith("[dlpl_jax] error: "), err
