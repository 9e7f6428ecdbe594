"""The ImageNet recipes end to end on the fake ImageNet (the conftest's
``fake_imagenet``): every config's smoke variant through the command line (the 1% one
stopped after an epoch and resumed), the trainer resuming without re-reading its
init_checkpoint, and two real processes reading disjoint parts and evaluating every
validation image once."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from dlpl_jax.data import imagenet
from dlpl_jax.errors import UsageError
from dlpl_jax.training import checkpoint
from dlpl_jax.training import evaluate as evaluate_lib
from dlpl_jax.training import loop
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _init_file(config, path):
  """Backbone variables as a self-supervised checkpoint holds them (no classifier)."""
  spec = setup.read(config)
  state = setup.new_state(spec, mesh_lib.make_mesh(), read_init=False)
  flat = {}
  for name, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
    for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items():
      if k[0] != "classifier":
        flat["/".join((name,) + k)] = np.asarray(v) + (0.01 if name == "params" else 0.0)
  np.savez(path, **flat)


def test_trainer_imagenet_smoke_resumes_without_the_init_file(imagenet_config,
                                                              fake_imagenet, tmp_path):
  c = imagenet_config(data_dir=fake_imagenet)
  _init_file(c, tmp_path / "init.npz")
  c.init_checkpoint = str(tmp_path / "init.npz")
  out = loop.train_and_evaluate(c, str(tmp_path / "run"), stop_at=3)
  assert out["step"] == 3 and out["interrupted"]
  shutil.move(tmp_path / "init.npz", tmp_path / "moved.npz")  # the file is gone
  out = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert out["step"] == 6 and not out["interrupted"] and out["num_evals"] == 2
  assert out["final_top1"] is not None
  # A fresh run with the file gone is refused in one line.
  with pytest.raises(UsageError, match="is not a file"):
    loop.train_and_evaluate(c, str(tmp_path / "other"))


def _clip_csvs(fake_dir, tmp_path):
  """The official CSV pair for the fake ImageNet: CLIP's (80% right) labels with
  probabilities, split at 0.7, indexed in ImageFolder's order."""
  meta = imagenet._read_meta("fake_imagenet", "train", fake_dir)  # pylint: disable=protected-access
  index = imagenet.imagefolder_order(meta["file_name"], meta["label"])
  rng = np.random.default_rng(0)
  probs = rng.uniform(0.1, 1.0, len(index))
  preds = np.where(rng.uniform(size=len(index)) < 0.8, meta["label"], (meta["label"] + 1) % 10)
  for name, sel in (("L.csv", probs >= 0.7), ("U.csv", probs < 0.7)):
    with open(tmp_path / name, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["Index", "PseudoLabel", "Probs"])
      for i, p, q in zip(index[sel], preds[sel], probs[sel]):
        w.writerow([int(i), int(p), f"{q:.4f}"])
  return str(tmp_path / "L.csv"), str(tmp_path / "U.csv")


def test_command_line_smoke_runs(fake_imagenet, tmp_path, python):
  """Every ImageNet config's smoke variant through ``python -m dlpl_jax.main``, the 1%
  one stopped after an epoch and resumed (four runs)."""
  def main(*args):
    return python(["-m", "dlpl_jax.main", *args])
  run = str(tmp_path / "run")
  base = ["--config=experiments/imagenet_1pct.py:smoke",
          f"--config.data_dir={fake_imagenet}", f"--workdir={run}"]
  first = main(*base, "--config.imagenet.epochs=1")
  assert first.returncode == 0, first.stderr[-2000:]
  resumed = main(*base, "--allow_config_change")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stderr and "done: 6 steps" in resumed.stderr
  r = main("--config=experiments/imagenet_0p2pct.py:smoke",
           f"--config.data_dir={fake_imagenet}", f"--workdir={tmp_path / 'p2'}")
  assert r.returncode == 0 and "10 images" in r.stderr, r.stderr[-2000:]
  lab, unl = _clip_csvs(fake_imagenet, tmp_path)
  r = main("--config=experiments/imagenet_clip_zeroshot.py:smoke",
           f"--config.data_dir={fake_imagenet}", f"--workdir={tmp_path / 'clip'}",
           f"--config.imagenet.clip_labeled={lab}", f"--config.imagenet.clip_unlabeled={unl}",
           f"--config.imagenet.index_cache={tmp_path / 'files.npz'}")
  assert r.returncode == 0 and "CLIP fallback >= 0.3" in r.stderr, r.stderr[-2000:]
  with open(tmp_path / "clip" / "metrics.jsonl") as f:
    assert "train/clip_rate" in f.read()


# --- two processes --------------------------------------------------------------------

_TWO_PROCESS_WORKER = """
import sys
from dlpl_jax import host
host.configure()
import jax
pid, port, workdir, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.config.update("jax_num_cpu_devices", 1)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid, heartbeat_timeout_seconds=20)
from dlpl_jax import configs
from dlpl_jax.training import loop
c = configs.load_config_file("experiments/imagenet_1pct.py:smoke")
c.data_dir = data_dir
s = loop.train_and_evaluate(c, workdir)
print("SUMMARY", s["step"], s["num_evals"], s["final_top1"], flush=True)
"""


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_read_disjoint_parts_and_evaluate_every_image_once(
    imagenet_config, fake_imagenet, tmp_path):
  """The ImageNet smoke config in two real processes (one CPU device each): both finish
  with the same summary; every evaluation counts each of the 40 validation images once
  (each process evaluates its part, padded); and the final checkpoint, restored in this
  one process, evaluates on the whole validation split to the same record."""
  port, workdir = str(_port()), str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_WORKER, str(i), port,
                             workdir, fake_imagenet], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  summaries = {out.split("SUMMARY")[1].strip() for out, _ in outs}
  assert len(summaries) == 1, summaries
  assert summaries.pop().split()[:2] == ["6", "2"]
  assert "2 process(es)" in outs[0][1] and "a disjoint part per process" in outs[0][1]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    evals = [json.loads(line) for line in f if '"kind": "eval"' in line]
  assert [r["step"] for r in evals] == [3, 6]
  for r in evals:
    assert sum(r["eval/predicted"]) == 40
  # The last evaluation, redone in one process on the restored checkpoint.
  spec = setup.read(imagenet_config(data_dir=fake_imagenet))
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  template = setup.new_state(spec, mesh, read_init=False)
  state, step = checkpoint.Checkpointer(workdir, 3, 3).restore_latest(template)
  assert step == 6
  state = mesh_lib.replicate(jax.device_get(state), mesh)
  ev = evaluate_lib.evaluate_batches(
      state, imagenet.eval_batches(spec.imagenet, (0, 1)), model=setup.build_model(spec.model),
      batch=spec.eval_batch_size, mesh=mesh, params=spec.eval_params)
  assert sum(ev["eval/predicted"]) == 40
  assert ev["eval/predicted"] == evals[-1]["eval/predicted"]
  np.testing.assert_allclose(ev["eval/per_class"], evals[-1]["eval/per_class"], atol=1e-9)
  assert ev["eval/top1"] == pytest.approx(evals[-1]["eval/top1"], abs=1e-9)
