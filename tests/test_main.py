"""End-to-end command-line tests: the smoke run on the real CIFAR-10, resume, SIGTERM,
missing data, unknown config keys."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/cifar10_4shot.py:smoke"


def run_main(args, env_extra=None, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "dlpl_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_smoke_run_on_real_cifar10_then_resume(tmp_path, cifar_dir):
  wd = str(tmp_path / "smoke")
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}"], {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 0, res.stderr[-3000:]
  assert "labeled 40 (per class [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]), unlabeled 50000" in res.stderr
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["step"] == 12 and summary["num_evals"] == 2
  assert 0.0 <= summary["median_last20_top1"] <= 100.0
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  train_recs = [r for r in records if r["kind"] == "train"]
  eval_recs = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in train_recs] == [3, 6, 9, 12]
  for key in ("train/loss", "train/loss_x", "train/loss_u", "train/mask_rate", "train/lr",
              "pseudo/acc", "pseudo/counts", "pseudo/imbalance", "pseudo/kl_uniform",
              "marginal"):
    assert key in train_recs[-1], key
  assert len(eval_recs[-1]["eval/per_class"]) == 10
  assert len(eval_recs[-1]["pseudo/confusion"]) == 10
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["12", "6"]
  # Re-running the same command resumes from the latest checkpoint and does nothing more.
  res = run_main([f"--config={SMOKE}", f"--workdir={wd}"], {"TFDS_DATA_DIR": cifar_dir})
  assert res.returncode == 0 and "resumed from" in res.stderr and "at step 12" in res.stderr


def test_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path, cifar_dir):
  wd = str(tmp_path / "sig")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             TFDS_DATA_DIR=cifar_dir, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "dlpl_jax.main", f"--config={SMOKE}", f"--workdir={wd}",
       "--config.total_steps=100000", "--config.checkpoint_every=100000",
       "--config.eval_every=100000", "--config.log_every=5"],
      cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  lines = []
  deadline = time.monotonic() + 300
  for line in proc.stderr:
    lines.append(line)
    if "first step" in line or time.monotonic() > deadline:
      break
  time.sleep(2.0)
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=120)
  out = "".join(lines) + rest
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM received: checkpoint saved at step" in out
  steps = os.listdir(os.path.join(wd, "checkpoints"))
  assert len(steps) == 1 and int(steps[0]) > 0


def test_missing_data_fails_fast_naming_tfds_data_dir(tmp_path):
  t0 = time.monotonic()
  res = run_main([f"--config={SMOKE}", f"--workdir={tmp_path / 'w'}"],
                 {"TFDS_DATA_DIR": str(tmp_path / "empty")})
  assert res.returncode == 2, res.stderr[-2000:]
  assert "TFDS_DATA_DIR" in res.stderr
  assert time.monotonic() - t0 < 60  # process start + imports; no download attempt


def test_unknown_config_key_lists_valid_ones(tmp_path):
  res = run_main([f"--config={SMOKE}", f"--workdir={tmp_path}", "--config.totl_steps=3"])
  assert res.returncode != 0
  assert "unknown config key(s) ['totl_steps']" in res.stderr
  assert "total_steps" in res.stderr and "labels_per_class" in res.stderr


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
  # every streamed unlabeled image lands in the confusion counters: 4 steps x 16
  ev = [r for r in records if r["kind"] == "eval"][-1]
  assert sum(map(sum, ev["pseudo/confusion"])) == 4 * 16
