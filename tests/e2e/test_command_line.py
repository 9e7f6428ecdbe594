"""The command line on the real CIFAR-10: the smoke run and its resume, signals (during
training, twice, during start-up), the streamed unlabeled path, missing data, and the
full config refused on a CPU. (Usage errors that need no data: tests/test_main.py.)"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from dlpl_jax.training import setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = "experiments/cifar10_4shot.py:smoke"
# A run that goes on until it is stopped: no evaluation, a log every 5 steps.
ENDLESS = ["--config.total_steps=100000", "--config.eval_every=100000",
           "--config.log_every=5", "--config.progress=False"]


def _env(**extra):
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **extra)


def run_main(args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
  """``python -m dlpl_jax.main ARGS``, to its end."""
  return subprocess.run([sys.executable, "-m", "dlpl_jax.main", *args], cwd=REPO,
                        env=_env(**(env_extra or {})), capture_output=True, text=True,
                        timeout=timeout)


def start_main(args, cifar_dir) -> subprocess.Popen:
  """``python -m dlpl_jax.main ARGS`` started, its stderr a pipe read line by line."""
  return subprocess.Popen([sys.executable, "-m", "dlpl_jax.main", *args], cwd=REPO,
                          env=_env(TFDS_DATA_DIR=cifar_dir, PYTHONUNBUFFERED="1"),
                          stderr=subprocess.PIPE, text=True)


def _start(wd, cifar_dir, *extra):
  return start_main([f"--config={SMOKE}", f"--workdir={wd}", *ENDLESS, *extra], cifar_dir)


def _read_until(proc, text, lines, timeout=300):
  """Reads stderr lines into ``lines`` up to the first holding ``text``; returns it (None
  at the end of the output)."""
  deadline = time.monotonic() + timeout
  for line in proc.stderr:
    lines.append(line)
    if text in line or time.monotonic() > deadline:
      return line
  return None


def _records(wd):
  with open(os.path.join(wd, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(l) for l in f]


def test_smoke_run_on_real_cifar10_then_resume(tmp_path, cifar_dir):
  wd = str(tmp_path / "smoke")
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}"], {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 0, res.stderr[-3000:]
  assert "labeled 40 (per class [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]), unlabeled 50000" in res.stderr
  assert f"results in {wd}" in res.stderr
  with open(os.path.join(wd, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["step"] == 120 and summary["num_evals"] == 2
  assert 0.0 <= summary["median_last20_top1"] <= 100.0
  # The smoke variant shows the method at work: confident pseudo-labels, a moving marginal.
  assert summary["final_mask_rate"] > 0.05
  assert max(summary["final_marginal"]) - min(summary["final_marginal"]) > 0.01
  records = _records(wd)
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
  assert _records(wd) == records
  # The baseline in the same folder is refused, naming the key (the default workdirs of
  # the two commands differ: dlpl_jax.main.default_workdir).
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}", "--config.method=fixmatch"],
                 {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 2 and "method: 'debiaspl' -> 'fixmatch'" in res.stderr


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
  assert _records(wd)[-1]["step"] == int(steps[0])
  with open(os.path.join(wd, "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["interrupted"] is True


def test_second_sigint_aborts_at_once_keeping_the_latest_checkpoint(tmp_path, cifar_dir):
  wd = str(tmp_path / "int2")
  args = [f"--config={SMOKE}", f"--workdir={wd}", *ENDLESS, "--config.checkpoint_every=3"]
  proc = start_main(args, cifar_dir)
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
  proc = start_main(args, cifar_dir)
  lines = []
  _read_until(proc, "first step", lines)
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=120)
  out = "".join(lines) + rest
  assert "resumed from" in out and "damaged" not in out, out[-3000:]


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


def test_streamed_unlabeled_path_on_real_cifar10(tmp_path, cifar_dir):
  wd = str(tmp_path / "stream")
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}", "--config.in_memory=False",
                  "--config.total_steps=4", "--config.eval_every=4",
                  "--config.checkpoint_every=4", "--config.log_every=2"],
                 {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 0, res.stderr[-3000:]
  assert "streamed from TFDS" in res.stderr
  records = _records(wd)
  assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4]
  # every streamed unlabeled image lands in the confusion counters: 4 steps x 32
  ev = [r for r in records if r["kind"] == "eval"][-1]
  assert sum(map(sum, ev["pseudo/confusion"])) == 4 * 32


# `python -m dlpl_jax.main ARGS` where a TFDS download would leave a note in the file
# $DLPL_TEST_DOWNLOADS and stop.
NO_DOWNLOAD = textwrap.dedent("""
    import os, runpy, sys
    import tensorflow_datasets as tfds
    def download_and_prepare(self, *args, **kwargs):
      with open(os.environ["DLPL_TEST_DOWNLOADS"], "a", encoding="utf-8") as f:
        f.write(self.name + "\\n")
      raise SystemExit("a download was attempted")
    tfds.core.DatasetBuilder.download_and_prepare = download_and_prepare
    sys.argv = ["dlpl_jax.main", *sys.argv[1:]]
    runpy.run_module("dlpl_jax.main", run_name="__main__", alter_sys=True)
    """)


def test_missing_data_fails_fast_naming_tfds_data_dir(tmp_path):
  """No data: one line naming TFDS_DATA_DIR, status 2, and no download attempted."""
  empty, downloads = tmp_path / "empty", tmp_path / "downloads.txt"
  empty.mkdir()
  res = subprocess.run(
      [sys.executable, "-c", NO_DOWNLOAD, f"--config={SMOKE}", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, env=_env(TFDS_DATA_DIR=str(empty), DLPL_TEST_DOWNLOADS=str(downloads)),
      capture_output=True, text=True, timeout=600)
  assert res.returncode == 2, res.stderr[-2000:]
  assert "TFDS_DATA_DIR" in res.stderr and "not prepared" in res.stderr
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith("[dlpl_jax] error: ") and "Traceback" not in res.stderr
  assert not downloads.exists()  # no download attempt
  assert os.listdir(empty) == []  # nothing written to the data folder


def test_full_config_on_cpu_is_refused_with_the_hours(tmp_path):
  res = run_main(["--config=experiments/cifar10_4shot.py", f"--workdir={tmp_path}"])
  assert res.returncode == 2, res.stderr[-2000:]
  assert "needs a GPU/TPU" in res.stderr and "--allow_cpu" in res.stderr
  # The hours on one H100 and the days on this CPU, as setup.runtime_estimate gives them.
  from dlpl_jax import configs  # pylint: disable=import-outside-toplevel
  cpu_h, h100_h = setup.runtime_estimate(setup.read(
      configs.load_config_file("experiments/cifar10_4shot.py")))
  assert f"about {h100_h:.1f} h on one H100" in res.stderr, res.stderr[-2000:]
  assert f"about {cpu_h / 24:,.0f} days" in res.stderr
  assert "Traceback" not in res.stderr
