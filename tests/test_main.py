"""End-to-end command-line tests: the smoke run on the real CIFAR-10, resume, signals
(during training and start-up, twice), missing data, usage errors and exit statuses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dlpl_jax import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/cifar10_4shot.py:smoke"


def run_main(args, env_extra=None, timeout=600, stop_after_resume=False):
  """Runs the command line; with ``stop_after_resume``, SIGTERMs it once it resumed and
  returns its stderr."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
  if not stop_after_resume:
    return subprocess.run([sys.executable, "-m", "dlpl_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
  proc = subprocess.Popen([sys.executable, "-m", "dlpl_jax.main", *args], cwd=REPO,
                          env=dict(env, PYTHONUNBUFFERED="1"), stderr=subprocess.PIPE,
                          text=True)
  lines = []
  _read_until(proc, "first step", lines, timeout)
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=120)
  return "".join(lines) + rest


def test_smoke_run_on_real_cifar10_then_resume(tmp_path, cifar_dir):
  wd = str(tmp_path / "smoke")
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}"], {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 0, res.stderr[-3000:]
  assert "labeled 40 (per class [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]), unlabeled 50000" in res.stderr
  assert f"results in {wd}" in res.stderr
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["step"] == 120 and summary["num_evals"] == 2
  assert 0.0 <= summary["median_last20_top1"] <= 100.0
  # The smoke variant shows the method at work: confident pseudo-labels, a moving marginal.
  assert summary["final_mask_rate"] > 0.05
  assert max(summary["final_marginal"]) - min(summary["final_marginal"]) > 0.01
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  train_recs = [r for r in records if r["kind"] == "train"]
  eval_recs = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in train_recs] == [20, 40, 60, 80, 100, 120]
  for key in ("train/loss", "train/loss_x", "train/loss_u", "train/mask_rate", "train/lr",
              "pseudo/acc", "pseudo/counts", "pseudo/imbalance", "pseudo/kl_uniform",
              "pseudo/kl_true", "marginal"):
    assert key in train_recs[-1], key
  assert len(eval_recs[-1]["eval/per_class"]) == 10
  assert len(eval_recs[-1]["pseudo/confusion"]) == 10
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["120", "60"]
  # Re-running the same command resumes from the latest checkpoint and does nothing more.
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}"], {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 0 and "resumed from" in res.stderr and "at step 120" in res.stderr
  # The baseline in the same folder is refused, naming the key (the default workdirs of
  # the two commands differ: dlpl_jax.main.default_workdir).
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}", "--config.method=fixmatch"],
                 {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 2 and "method: 'debiaspl' -> 'fixmatch'" in res.stderr


def _start(wd, cifar_dir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             TFDS_DATA_DIR=cifar_dir, PYTHONUNBUFFERED="1")
  return subprocess.Popen(
      [sys.executable, "-m", "dlpl_jax.main", f"--config={SMOKE}", f"--workdir={wd}",
       "--config.total_steps=100000", "--config.eval_every=100000", "--config.log_every=5",
       "--config.progress=False", *extra],
      cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _read_until(proc, text, lines, timeout=300):
  deadline = time.monotonic() + timeout
  for line in proc.stderr:
    lines.append(line)
    if text in line or time.monotonic() > deadline:
      return line
  return None


def test_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path, cifar_dir):
  wd = str(tmp_path / "sig")
  proc = _start(wd, cifar_dir, "--config.checkpoint_every=100000")
  lines = []
  _read_until(proc, "first step", lines)
  time.sleep(2.0)
  proc.send_signal(signal.SIGTERM)
  ack = _read_until(proc, "received", lines, timeout=10)
  assert ack is not None and ack.startswith("[dlpl_jax] SIGTERM received: stopping after")
  _, rest = proc.communicate(timeout=120)
  out = "".join(lines) + rest
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: checkpoint saved at step" in out
  steps = os.listdir(os.path.join(wd, "checkpoints"))
  assert len(steps) == 1 and int(steps[0]) > 0
  # The steps since the last log are written too.
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert records[-1]["step"] == int(steps[0])


def test_second_sigint_aborts_at_once_keeping_the_latest_checkpoint(tmp_path, cifar_dir):
  wd = str(tmp_path / "int2")
  proc = _start(wd, cifar_dir, "--config.checkpoint_every=3")
  lines = []
  _read_until(proc, "first step", lines)
  while not any(s.isdigit() for s in os.listdir(os.path.join(wd, "checkpoints"))):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  assert "SIGINT received" in _read_until(proc, "received", lines, timeout=10)
  proc.send_signal(signal.SIGINT)
  _, rest = proc.communicate(timeout=30)
  assert proc.returncode == 130, "".join(lines) + rest
  assert "second SIGINT: aborting now" in rest
  # The latest complete checkpoint restores (verified) and the run goes on from it.
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}", "--config.total_steps=100000",
                  "--config.eval_every=100000", "--config.log_every=5",
                  "--config.progress=False", "--config.checkpoint_every=3"],
                 {"TFDS_DATA_DIR": cifar_dir}, timeout=600, stop_after_resume=True)
  assert "resumed from" in res and "damaged" not in res


def test_signal_during_startup_exits_zero(tmp_path, cifar_dir):
  wd = str(tmp_path / "start")
  proc = _start(wd, cifar_dir)
  lines = []
  _read_until(proc, "devices:", lines)  # data loading (TensorFlow) comes next
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=120)
  out = "".join(lines) + rest
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM received" in out and "during start-up: nothing was trained" in out
  assert "Traceback" not in out


def test_missing_data_fails_fast_naming_tfds_data_dir(tmp_path):
  t0 = time.monotonic()
  res = run_main([f"--config={SMOKE}", f"--workdir={tmp_path / 'w'}"],
                 {"TFDS_DATA_DIR": str(tmp_path / "empty")})
  assert res.returncode == 2, res.stderr[-2000:]
  assert "TFDS_DATA_DIR" in res.stderr
  assert time.monotonic() - t0 < 60  # process start + imports; no download attempt


@pytest.mark.parametrize("args,message", [
    (["--config.totl_steps=3"], "unknown config key 'totl_steps'; did you mean 'total_steps'?"),
    (["--config.total_steps=abc"], "total_steps"),
    (["--config.lr=-1"], "bad config: lr must be a finite number > 0, got -1"),
    (["--restore_step=x"], "restore_step"),
])
def test_usage_errors_are_one_line_with_status_2(tmp_path, args, message):
  res = run_main([f"--config={SMOKE}", f"--workdir={tmp_path / 'w'}", *args])
  assert res.returncode == 2, res.stderr[-2000:]
  assert message in res.stderr
  assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize("spec,message", [
    ("experiments/nope.py", "config file 'experiments/nope.py' does not exist"),
    ("experiments/cifar10_4shot.py:smok", "unknown variant 'smok'"),
])
def test_bad_config_path_or_variant_is_one_line(tmp_path, spec, message):
  res = run_main([f"--config={spec}", f"--workdir={tmp_path}", "--config.lr=0.1"])
  assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
  assert len(res.stderr.strip().splitlines()) == 1


def test_help_exits_zero_and_a_missing_config_is_one_line():
  res = run_main(["--help"])
  assert res.returncode == 0 and "--config" in res.stdout, res.stderr[-2000:]
  res = run_main(["--workdir=/tmp/unused"])
  assert res.returncode == 2 and res.stderr.strip().startswith("[dlpl_jax] error: flag "
                                                               "--config"), res.stderr


def test_full_config_on_cpu_is_refused_with_the_hours(tmp_path):
  res = run_main(["--config=experiments/cifar10_4shot.py", f"--workdir={tmp_path}"])
  assert res.returncode == 2, res.stderr[-2000:]
  assert "needs a GPU/TPU" in res.stderr and "--allow_cpu" in res.stderr


def test_streamed_unlabeled_path_on_real_cifar10(tmp_path, cifar_dir):
  wd = str(tmp_path / "stream")
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}", "--config.in_memory=False",
                  "--config.total_steps=4", "--config.eval_every=4",
                  "--config.checkpoint_every=4", "--config.log_every=2"],
                 {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 0, res.stderr[-3000:]
  assert "streamed from TFDS" in res.stderr
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4]
  # every streamed unlabeled image lands in the confusion counters: 4 steps x 32
  ev = [r for r in records if r["kind"] == "eval"][-1]
  assert sum(map(sum, ev["pseudo/confusion"])) == 4 * 32


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"JAX_COORDINATOR_ADDRESS": "host0:1234"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, False),  # a single-host TPU VM
    ({"SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16"}, True),
    ({"SLURM_STEP_NODELIST": "gpu01", "SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "16"}, False),  # an allocation, outside an srun step
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, False),
])
def test_several_processes_are_detected_from_the_environment(environ, expected):
  assert main.auto_multihost(environ) is expected
