"""Two real processes (jax.distributed over a localhost coordinator, CPU backend, Gloo
collectives, one device each) against one process with two devices.

* The tiny config trained by two processes gives the same params, batch statistics,
  optimizer state, EMA, marginal, step and evaluation as one process with two simulated
  devices, and its checkpoint (written by both processes) restores in one process.
  Both run the same partitioned XLA program, and a sum of two operands does not depend
  on their order, so the results are bit-identical on the CPU; the test allows float32
  rounding (rtol 1e-6) in case a backend reassociates.
* A checkpoint written by two processes resumes in one, and the other way round, to the
  state of an uninterrupted run.
* The command line in two processes: SIGTERM to both saves the same step and exits 0;
  SIGKILL to one ends the other at once with one line and status 1 (not a hang); the
  same command resumes to the state of an uninterrupted run. Process 1 prints and
  writes nothing of its own.
* The streaming input path: each process reads a disjoint part of the training split.

(Two devices in one process against one device: tests/training/test_mesh.py.)
"""

import concurrent.futures
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from dlpl_jax import configs
from dlpl_jax.training import checkpoint
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# `python -c WORKER N PID PORT WORKDIR CONFIG.pickle [STOP_AT]`: process PID of N (one
# process: two devices) trains the pickled config on the tiny synthetic data (the
# `tiny_data` fixture's) in WORKDIR.
WORKER = textwrap.dedent("""
    import pickle, sys
    from dlpl_jax import host
    host.configure()
    import jax
    n, pid, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    with open(sys.argv[5], "rb") as f:
      config = pickle.load(f)
    stop_at = int(sys.argv[6]) if len(sys.argv) > 6 else None
    jax.config.update("jax_num_cpu_devices", 1 if n > 1 else 2)
    if n > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n,
                                 process_id=pid, heartbeat_timeout_seconds=20)
    from dlpl_jax.data import in_memory
    from dlpl_jax.training import loop
    data = in_memory.synthetic(labeled_per_class=2, unlabeled=64, test=64)
    s = loop.train_and_evaluate(config, workdir, data=data, stop_at=stop_at)
    print("SUMMARY", s["step"], s["final_top1"], flush=True)
    """)


@pytest.fixture
def config_file(tiny_config, tmp_path):
  """The tiny config (4 steps, a checkpoint every 2), pickled for the workers."""
  path = tmp_path / "config.pickle"
  with open(path, "wb") as f:
    pickle.dump(tiny_config(), f)
  return str(path)


def _template(config):
  """A fresh state of ``config`` in this process, the target of a restore."""
  spec = setup.read(config)
  return setup.new_state(spec, mesh_lib.make_mesh(), read_init=False, image_shape=(32, 32, 3))


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


def test_two_processes_equal_one_process_with_two_devices(tmp_path, tiny_config,
                                                         config_file):
  port = _port()
  two = [subprocess.Popen([sys.executable, "-c", WORKER, "2", str(i), str(port),
                           str(tmp_path / "two"), config_file], cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
         for i in range(2)]
  one = subprocess.run([sys.executable, "-c", WORKER, "1", "0", "0", str(tmp_path / "one"),
                        config_file],
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

  template = _template(tiny_config())
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


def test_resume_across_process_counts_equals_an_uninterrupted_run(tmp_path, tiny_config,
                                                                 config_file):
  """2 steps in two processes, stop and save; 2 more in one process (2 devices); and the
  other way round (the two chains run side by side): both end where one uninterrupted
  process ends."""
  def run(n, workdir, stop_at):
    port = str(_port())
    stop = [] if stop_at is None else [str(stop_at)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(n), str(i), port, workdir,
                               config_file, *stop],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errs)]

  def chain(name, first, second):
    return run(first, str(tmp_path / name), 2) + run(second, str(tmp_path / name), None)

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    jobs = [pool.submit(run, 1, str(tmp_path / "ref"), None),
            pool.submit(chain, "a", 2, 1), pool.submit(chain, "b", 1, 2)]
    results = [r for j in jobs for r in j.result()]
  for rc, err in results:
    assert rc == 0, err[-3000:]
  template = _template(tiny_config())
  ref = None
  for name in ("ref", "a", "b"):
    state, step = checkpoint.Checkpointer(str(tmp_path / name), 2, 3).restore_latest(template)
    assert step == 4
    if ref is None:
      ref = _leaves(state)
      continue
    for x, y in zip(ref, _leaves(state)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=0)


# `python -m dlpl_jax.main ARGS`, recording every file Python opens for writing to the
# file named by $DLPL_TEST_WRITES (the processes other than 0 must write nothing but
# their part of the checkpoints).
MAIN = textwrap.dedent("""
    import builtins, io, os, runpy, sys
    log, real_open = os.environ.get("DLPL_TEST_WRITES"), io.open
    def recording_open(file, mode="r", *args, **kwargs):
      if log and any(c in mode for c in "wax+"):
        with real_open(log, "a") as f:
          f.write(os.path.abspath(os.fspath(file)) + "\\n")
      return real_open(file, mode, *args, **kwargs)
    builtins.open = io.open = recording_open
    sys.argv = ["dlpl_jax.main", *sys.argv[1:]]
    runpy.run_module("dlpl_jax.main", run_name="__main__", alter_sys=True)
    """)


def _main(args, env, **kwargs):
  return subprocess.Popen([sys.executable, "-c", MAIN, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _checkpoint_steps(wd) -> list[int]:
  d = wd / "checkpoints"
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if d.is_dir() else []


def test_sigterm_sigkill_and_resume_of_two_processes(tmp_path, cifar_dir):
  """The command line with the smoke config in two processes:

  1. SIGTERM to both (0.3 s apart) while they train: both save the same step, exit 0.
  2. The same command resumes both; SIGKILL to process 1 ends process 0 at once with one
     line and status 1 (a failed collective, not a hang).
  3. The same command resumes from the latest complete checkpoint and ends in the state
     of one uninterrupted process with two devices.
  Process 1 prints nothing on stdout, no log line, and writes no file outside
  checkpoints/ but its brief writability probe."""
  total = 60
  args = ["--config=experiments/cifar10_4shot.py:smoke", f"--config.total_steps={total}",
          "--config.checkpoint_every=3", "--config.eval_every=30", "--config.progress=False",
          "--heartbeat_timeout=20"]
  env = dict(_env(), TFDS_DATA_DIR=cifar_dir)
  ref = _main([*args, f"--workdir={tmp_path / 'ref'}"], dict(env, JAX_NUM_CPU_DEVICES="2"))
  _, err = ref.communicate(timeout=600)
  assert ref.returncode == 0, err[-3000:]

  wd = tmp_path / "two"
  writes = tmp_path / "writes_1.txt"
  pids = ([], [])

  def start_two():
    penv = dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_port()}")
    procs = [_main([*args, f"--workdir={wd}", "--multihost", "--num_processes=2",
                    f"--process_id={i}"],
                   dict(penv, DLPL_TEST_WRITES=str(writes)) if i == 1 else penv)
             for i in range(2)]
    for i, p in enumerate(procs):
      pids[i].append(p.pid)
    return procs

  def wait_for_checkpoint_after(procs, step):
    deadline = time.monotonic() + 400
    while not any(s > step for s in _checkpoint_steps(wd)):
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
          p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
      time.sleep(0.2)

  def ended(procs, timeout):
    try:
      return [p.communicate(timeout=timeout) for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()

  def process_1_silent(out, err, signal_name=None):
    assert out == ""  # stdout: nothing at all (Gloo's notice included)
    if signal_name:  # the acknowledgement of a signal sent to this process
      err = err.replace(f"[dlpl_jax] {signal_name} received", "")
    assert "[dlpl_jax]" not in err, err[-2000:]

  # 1. SIGTERM to both.
  procs = start_two()
  wait_for_checkpoint_after(procs, 0)
  procs[0].send_signal(signal.SIGTERM)
  time.sleep(0.3)
  procs[1].send_signal(signal.SIGTERM)
  outs = ended(procs, 300)
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  stopped = _checkpoint_steps(wd)[-1]
  assert 3 <= stopped < total, (stopped, outs[0][1][-2000:])
  assert f"checkpoint saved at step {stopped}" in outs[0][1], outs[0][1][-2000:]
  process_1_silent(*outs[1], "SIGTERM")

  # 2. Resume; SIGKILL to process 1.
  procs = start_two()
  wait_for_checkpoint_after(procs, stopped)
  procs[1].send_signal(signal.SIGKILL)
  # Process 0 ends within 60 s (a failed collective, not the 20 s heartbeat x retries):
  # past that, communicate() raises TimeoutExpired and the test fails.
  (_, err), _ = ended(procs, 60)
  assert f"resumed from {wd / 'checkpoints'} at step {stopped}" in err, err[-3000:]
  assert procs[0].returncode == 1, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("[dlpl_jax] error:") and "another process" in last, err[-3000:]

  # 3. Resume to the end: the state of the uninterrupted run.
  procs = start_two()
  outs = ended(procs, 600)
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "resumed from" in outs[0][1]
  process_1_silent(*outs[1])
  template = _template(configs.load_config_file("experiments/cifar10_4shot.py:smoke"))
  leaves = {}
  for name in ("ref", "two"):
    state, step = checkpoint.Checkpointer(str(tmp_path / name), 3, 3).restore_latest(template)
    assert step == total
    leaves[name] = _leaves(state)
  for a, b in zip(leaves["ref"], leaves["two"]):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
  # Process 1's own files: none outside checkpoints/ (the probe is removed at once).
  written = set(open(writes).read().split()) if writes.exists() else set()
  outside = [w for w in written if not w.startswith((str(wd / "checkpoints") + os.sep,
                                                      "/proc/"))]
  assert all(os.path.basename(w).startswith(".write_test.") for w in outside), outside
  assert not any(os.path.exists(w) for w in outside)
  # TensorBoard event files are named ...tfevents.<time>.<host>.<pid>...: process 0's.
  events = os.listdir(wd / "tensorboard")
  assert events and all(int(e.split(".")[-3]) in pids[0] for e in events), (events, pids)


STREAM_WORKER = textwrap.dedent("""
    import sys, zlib
    from dlpl_jax import host
    host.configure()
    import jax, numpy as np
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid, heartbeat_timeout_seconds=20)
    from dlpl_jax import configs
    from dlpl_jax.training import setup
    c = configs.load_config_file("experiments/cifar10_4shot.py:smoke")
    c.in_memory, c.batch_size, c.mu = False, 100, 5  # 250 images per process and step
    it = setup._unlabeled_stream(setup.read(c), step=0)  # the trainer's stream
    keys = []
    for _ in range(100):  # 100 x 250 = one pass over this process's 25,000 images
      b = next(it)
      assert b["image"].shape == (250, 32, 32, 3), b["image"].shape
      keys += [zlib.crc32(im.tobytes()) * 16 + int(l) for im, l in zip(b["image"], b["label"])]
    np.save(out, np.array(keys, np.int64))
    """)


def test_streamed_unlabeled_batches_are_a_disjoint_part_per_process(tmp_path, cifar_dir):
  """``in_memory=False`` in two processes: each reads its own half of CIFAR-10's training
  split (one pass = 25,000 images each, no image in both), in batches of B*mu/2."""
  port = _port()
  env = dict(_env(), TFDS_DATA_DIR=cifar_dir)
  procs = [subprocess.Popen([sys.executable, "-c", STREAM_WORKER, str(i), str(port),
                             str(tmp_path / f"keys_{i}.npy")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  keys = [np.load(tmp_path / f"keys_{i}.npy") for i in range(2)]
  assert [len(k) for k in keys] == [25_000, 25_000]
  # One pass over a part reads each of its images once (CIFAR-10's training images are
  # distinct), and no image is read by both processes.
  assert [len(set(k.tolist())) for k in keys] == [25_000, 25_000]
  assert not set(keys[0].tolist()) & set(keys[1].tolist())
