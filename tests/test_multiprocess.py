"""Two real processes (jax.distributed over a localhost coordinator, CPU backend, Gloo
collectives, one device each) against one process with two devices.

* The tiny config trained by two processes gives the same params, batch statistics,
  optimizer state, EMA, marginal, step and evaluation as one process with two simulated
  devices, and its checkpoint (written by both processes) restores in one process.
  Both run the same partitioned XLA program, and a sum of two operands does not depend
  on their order, so the results were bit-identical here; the test allows float32
  rounding (rtol 1e-6) in case a backend reassociates.
* SIGKILL to one process of a command-line run ends the other at once with one line and
  status 1 (not a hang), and the latest checkpoint stays intact.
* A checkpoint written by two processes resumes in one, and the other way round, to the
  state of an uninterrupted run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from dlpl_jax import checkpoint
from dlpl_jax import train
from tests.test_train import DATA, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import os, sys
    from dlpl_jax import host
    host.configure()
    import jax
    n, pid, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.config.update("jax_num_cpu_devices", 1 if n > 1 else 2)
    if n > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n,
                                 process_id=pid, heartbeat_timeout_seconds=20)
    from dlpl_jax import trainer
    from tests.test_train import DATA, tiny_config
    s = trainer.train_and_evaluate(tiny_config(), workdir, data=DATA)
    print("SUMMARY", s["step"], s["final_top1"], flush=True)
    """)


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")


def _leaves(state):
  return jax.device_get(jax.tree_util.tree_leaves(
      (state.params, state.batch_stats, state.opt_state, state.ema_params, state.marginal,
       state.step)))


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
  port = _port()
  two = [subprocess.Popen([sys.executable, "-c", WORKER, "2", str(i), str(port),
                           str(tmp_path / "two")], cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
         for i in range(2)]
  one = subprocess.run([sys.executable, "-c", WORKER, "1", "0", "0", str(tmp_path / "one")],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  outs = [p.communicate(timeout=600) for p in two]
  for p, (out, err) in zip(two, outs):
    assert p.returncode == 0, err[-3000:]
  assert one.returncode == 0, one.stderr[-3000:]
  assert "2 process(es)" in outs[0][1] and "2 x cpu" in one.stderr
  assert "[dlpl_jax]" not in outs[1][1]  # only process 0 logs
  summaries = {o.split("SUMMARY")[1].strip() for o, _ in outs} | {
      one.stdout.split("SUMMARY")[1].strip()}
  assert len(summaries) == 1, summaries  # same step and eval top-1 everywhere

  c = tiny_config()
  template = train.create_train_state(c, train.build_model(c), DATA.x_l.shape[1:])
  restored = {}
  for name in ("two", "one"):
    state, step = checkpoint.Checkpointer(str(tmp_path / name), 2, 3).restore_latest(template)
    assert step == 4
    restored[name] = _leaves(state)
  for a, b in zip(restored["two"], restored["one"]):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
  # One writer: process 0's metrics equal the one-process run's, speed aside.
  strip = lambda wd: [{k: v for k, v in json.loads(l).items() if k != "train/steps_per_sec"}
                      for l in open(wd / "metrics.jsonl")]
  assert strip(tmp_path / "two") == strip(tmp_path / "one")


def test_sigkill_of_one_process_ends_the_other_in_one_line(tmp_path, cifar_dir):
  port = _port()
  wd = tmp_path / "run"
  args = ["--config=experiments/cifar10_4shot.py:smoke", f"--workdir={wd}",
          "--multihost", "--num_processes=2", "--heartbeat_timeout=20",
          "--config.total_steps=100000", "--config.checkpoint_every=3",
          "--config.eval_every=100000", "--config.progress=False"]
  env = dict(_env(), TFDS_DATA_DIR=cifar_dir, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}")
  procs = [subprocess.Popen([sys.executable, "-m", "dlpl_jax.main", *args,
                             f"--process_id={i}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    deadline = time.monotonic() + 400
    ckpts = wd / "checkpoints"
    while not (ckpts.is_dir() and any(s.isdigit() for s in os.listdir(ckpts))):
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
          p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    waited = time.monotonic() - t0
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode == 1, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("[dlpl_jax] error:") and "another process" in last, err[-3000:]
  assert waited < 60, waited  # bounded: a failed collective, not a heartbeat wait
  # The latest complete checkpoint restores (verified) in a single process.
  c = json.load(open(wd / "config.json"))
  from dlpl_jax import configs  # pylint: disable=g-import-not-at-top
  cfg = configs.load_config_file("experiments/cifar10_4shot.py:smoke")
  assert cfg.model == c["model"]
  template = train.create_train_state(cfg, train.build_model(cfg), (32, 32, 3))
  _, step = checkpoint.Checkpointer(str(wd), 3, 3).restore_latest(template)
  assert step is not None and step % 3 == 0


def test_resume_across_process_counts_equals_an_uninterrupted_run(tmp_path):
  """2 steps in two processes, stop and save; 2 more in one process (2 devices); and the
  other way round: both end where one uninterrupted process ends (about 80 s here)."""
  def two(workdir, stop_at):
    port = _port()
    code = WORKER.replace("tiny_config(), workdir, data=DATA)",
                          f"tiny_config(), workdir, data=DATA, stop_at={stop_at})")
    procs = [subprocess.Popen([sys.executable, "-c", code, "2", str(i), str(port), workdir],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
      _, err = p.communicate(timeout=600)
      assert p.returncode == 0, err[-3000:]

  def one(workdir, stop_at):
    code = WORKER.replace("tiny_config(), workdir, data=DATA)",
                          f"tiny_config(), workdir, data=DATA, stop_at={stop_at})")
    res = subprocess.run([sys.executable, "-c", code, "1", "0", "0", workdir], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

  one(str(tmp_path / "ref"), None)
  two(str(tmp_path / "a"), 2)
  one(str(tmp_path / "a"), None)
  one(str(tmp_path / "b"), 2)
  two(str(tmp_path / "b"), None)
  c = tiny_config()
  template = train.create_train_state(c, train.build_model(c), DATA.x_l.shape[1:])
  ref = None
  for name in ("ref", "a", "b"):
    state, step = checkpoint.Checkpointer(str(tmp_path / name), 2, 3).restore_latest(template)
    assert step == 4
    if ref is None:
      ref = _leaves(state)
      continue
    for x, y in zip(ref, _leaves(state)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=0)
