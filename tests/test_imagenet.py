"""The ImageNet input (dlpl_jax/imagenet.py) on a fake ImageNet-shaped TFDS dataset, the
CLIP fallback against a hand-computed case, the ImageNet configs, and the trainer on
them (a resume that does not read init_checkpoint again)."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from dlpl_jax import configs
from dlpl_jax.data import imagenet
from dlpl_jax.data import splits
from dlpl_jax import multiview
from dlpl_jax.training import step as train
from dlpl_jax.errors import UsageError
from tests import imagenet_fake

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("fake_tfds"))
  imagenet_fake.build(d)
  return d


def _config(name="imagenet_1pct", variant="smoke", **overrides):
  c = configs.load_config_file(os.path.join(REPO, "experiments", f"{name}.py:{variant}"))
  for k, v in overrides.items():
    if "." in k:
      c.imagenet[k.split(".")[1]] = v
    else:
      c[k] = v
  return c


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_ce(logits, labels):
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return logz - logits[np.arange(len(labels)), labels]


# --- pure pieces ---------------------------------------------------------------------


class TestSplits:

  def test_draw_fraction_counts_and_seed(self):
    labels = np.repeat(np.arange(4), [5, 12, 13, 8])
    a = splits.draw_fraction(labels, 0.2, seed=3, num_classes=4)
    np.testing.assert_array_equal(np.bincount(labels[a], minlength=4), [1, 2, 3, 2])
    np.testing.assert_array_equal(a, splits.draw_fraction(labels, 0.2, 3, 4))
    assert not np.array_equal(a, splits.draw_fraction(labels, 0.2, 4, 4))

  def test_draw_fraction_refuses_an_empty_class(self):
    with pytest.raises(ValueError, match="class 2 has no image"):
      splits.draw_fraction([0, 1, 3], 0.2, 0, 4)

  def test_imagefolder_order_sorts_by_class_then_name(self):
    names = ["n2_b.JPEG", "n1_z.JPEG", "n2_a.JPEG", "n1_c.JPEG"]
    np.testing.assert_array_equal(imagenet.imagefolder_order(names, [1, 0, 1, 0]),
                                  [3, 1, 2, 0])


class TestClipFallback:

  def test_against_hand_computed_case(self):
    """K = 2 views, B = 4, C = 3; the fallback takes image i iff CLIP's prob >= 0.3
    and none of the mean-weak / weak-1 / weak-2 debiased pseudo-labels passes 0.8."""
    rng = np.random.default_rng(0)
    weak = np.zeros((2, 4, 3), np.float32)
    weak[:, 0] = [6.0, 0.0, 0.0]          # confident in both views: masked, no fallback
    weak[0, 1] = [6.0, 0.0, 0.0]          # confident in view 1 only: no fallback
    weak[:, 2] = [0.5, 0.2, 0.0]          # never confident: fallback if CLIP >= 0.3
    weak[:, 3] = [0.1, 0.4, 0.0]          # never confident, CLIP prob too low
    strong = rng.normal(size=(2, 4, 3)).astype(np.float32)
    marginal = np.array([0.5, 0.3, 0.2], np.float32)
    new_marginal = np.array([0.45, 0.35, 0.2], np.float32)
    clip_labels = np.array([2, 2, 1, 0])
    clip_probs = np.array([0.9, 0.9, 0.3, 0.29], np.float32)
    tau, thr = 0.4, 0.8
    masks = []
    for src in [weak.mean(0), weak[0], weak[1]]:
      q = _np_softmax(src - tau * np.log(marginal))
      masks.append(q.max(-1) >= thr)
    want_f = (clip_probs >= 0.3) & ~np.any(masks, axis=0)
    np.testing.assert_array_equal(want_f, [False, False, True, False])
    want = np.mean([np.mean(want_f * _np_ce(strong[k] + tau * np.log(new_marginal),
                                            clip_labels)) for k in range(2)])
    loss, f = multiview.clip_fallback_loss(weak, strong, marginal, new_marginal,
                                           clip_labels, clip_probs, tau, thr, 0.3)
    np.testing.assert_array_equal(np.asarray(f), want_f.astype(np.float32))
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert want > 0

  def test_in_the_step_the_unlabeled_loss_is_the_average(self):
    c = _config("imagenet_clip_zeroshot", "smoke", **{"imagenet.clip_labeled": "x.npz"})
    cfg = train.StepConfig.from_config(c)
    assert cfg.clip_fallback == 0.3 and cfg.num_views == 2 and cfg.teacher
    assert train.StepConfig.from_config(_config()).clip_fallback == 0.0


class TestConfigs:

  @pytest.mark.parametrize("name,momentum,cld", [("imagenet_1pct", 0.999, 0.3),
                                                 ("imagenet_0p2pct", 0.99, 0.1),
                                                 ("imagenet_clip_zeroshot", 0.99, 0.3)])
  def test_official_numbers(self, name, momentum, cld):
    c = _config(name, "")
    assert (c.batch_size, c.mu, c.lr, c.momentum, c.nesterov, c.weight_decay) == (
        64, 5, 0.003, 0.9, False, 1e-4)
    assert (c.threshold, c.tau, c.lambda_u, c.teacher_momentum, c.num_views) == (
        0.8, 0.4, 10.0, 0.999, 2)
    assert (c.marginal_momentum, c.cld_weight) == (momentum, cld)
    assert c.weight_decay_all and c.teacher and c.eval_params == "student"
    per_epoch = 1_281_167 // 320
    assert (c.total_steps, c.warmup_steps, c.lr_update_every) == (
        50 * per_epoch, 5 * per_epoch, per_epoch)
    assert c.imagenet.crop_scale_min == 0.08 and c.imagenet.crop_size == 224

  def test_cifar_config_keeps_its_keys(self):
    c = configs.get_base_config()
    assert configs.input_kind(c) == "tfds" and configs.eval_params(c) == "ema"
    assert "imagenet" not in c

  @pytest.mark.parametrize("key,value,match", [
      ("imagenet.split", "5pct", "imagenet.split must be"),
      ("eval_params", "teacher", "eval_params must be one of"),
      ("in_memory", True, "set in_memory = False"),
      ("imagenet.clip_fallback", 0.3, "applies to split 'clip' only"),
  ])
  def test_bad_values_refused(self, key, value, match):
    with pytest.raises(UsageError, match=match):
      configs.validate(_config(**{key: value}))


# --- the tf.data pipeline ------------------------------------------------------------


class TestPipeline:

  def test_views_shapes_and_sharding(self, fake_dir):
    c = _config(data_dir=fake_dir)
    source, clip = imagenet.labeled_source(c)
    assert clip is None and source.name == imagenet_fake.SUBSET
    lab = next(imagenet.labeled_stream(c, source, 0, (0, 1)))
    assert lab["image"].shape == (4, 32, 32, 3) and lab["image"].dtype == np.uint8
    parts = [next(imagenet.unlabeled_stream(c, 0, (i, 2))) for i in range(2)]
    for u in parts:  # each process: B * mu / 2 images, K = 2 weak and 2 strong crops
      assert u["weak"].shape == (2, 4, 32, 32, 3) and u["strong"].shape == (2, 4, 32, 32, 3)
      assert not np.array_equal(u["weak"][0], u["weak"][1])  # independent crops
    # Evaluation: every validation image once over the processes, same batch count.
    evs = [list(imagenet.eval_batches(c, (i, 3))) for i in range(3)]
    assert len({len(e) for e in evs}) == 1
    labels = np.concatenate([b["label"] for e in evs for b in e])
    assert (labels >= 0).sum() == 40 and all(b["image"].shape[1:] == (32, 32, 3)
                                             for e in evs for b in e)

  @pytest.mark.parametrize("shape", [(375, 500), (500, 375), (64, 64), (10, 200),
                                     (200, 10), (30, 41), (41, 30)])
  def test_crop_window_is_torchvisions(self, shape):
    """The window equals torchvision's ``RandomResizedCrop.get_params`` (transcribed
    below, float64) fed the same uniform draws, for 50 seeds per shape; the thin
    shapes exhaust the 10 attempts and take the ratio-clamped centre crop."""
    tf = imagenet._import_tf()[0]  # pylint: disable=protected-access
    h, w = shape

    def torchvision(u_area, u_ratio, u_pos, scale_min=0.08, ratio=(3 / 4, 4 / 3)):
      area = h * w
      for s, r in zip(u_area, u_ratio):  # r: the log-ratio draw
        target, aspect = area * float(s), math.exp(float(r))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
          return [int(u_pos[0] * (h - ch + 1)), int(u_pos[1] * (w - cw + 1)), ch, cw]
      in_ratio = w / h
      if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
      elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
      else:
        cw, ch = w, h
      return [(h - ch) // 2, (w - cw) // 2, ch, cw]

    fallbacks = 0
    for i in range(50):
      seed = tf.constant([i, 7], tf.int64)
      seeds = tf.random.experimental.stateless_split(seed, 3)  # as _rrc_window draws
      u_area = tf.random.stateless_uniform([10], seeds[0], 0.08, 1.0).numpy()
      u_ratio = tf.random.stateless_uniform([10], seeds[1], math.log(3 / 4),
                                            math.log(4 / 3)).numpy()
      u_pos = tf.random.stateless_uniform([2], seeds[2]).numpy()
      got = [int(v) for v in imagenet._rrc_window(tf, tf.constant([h, w, 3]), seed, 0.08)]
      want = torchvision(u_area, u_ratio, u_pos)
      assert got == want, (shape, i, got, want)
      fallbacks += want[2:] in ([h, round(h * 4 / 3)], [round(w * 4 / 3), w], [h, w])
    if min(h, w) * 20 <= max(h, w):  # no window of the allowed ratios fits
      assert fallbacks == 50

  def test_0p2pct_draws_from_the_subset(self, fake_dir):
    c = _config("imagenet_0p2pct", data_dir=fake_dir)
    source, _ = imagenet.labeled_source(c)
    assert len(source.file_names) == 10  # round(0.2 * 5) = 1 per class
    assert sorted(source.targets.tolist()) == list(range(10))
    batch = next(imagenet.labeled_stream(c, source, 0, (0, 1)))
    assert set(batch["label"].tolist()) <= set(range(10))


def test_randaugment_cutout_at_224():
  x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
  out = np.asarray(jax.jit(train.randaugment_cutout)(jax.random.PRNGKey(1), x))
  assert out.shape == x.shape and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
  assert not np.array_equal(out, x)


# --- the trainer ---------------------------------------------------------------------


def _init_file(c, path):
  """Backbone variables as a self-supervised checkpoint holds them (no classifier)."""
  state = train.create_train_state(c, train.build_model(c), (32, 32, 3))
  flat = {}
  for name, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
    for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items():
      if k[0] != "classifier":
        flat["/".join((name,) + k)] = np.asarray(v) + (0.01 if name == "params" else 0.0)
  np.savez(path, **flat)


def test_trainer_imagenet_smoke_resumes_without_the_init_file(fake_dir, tmp_path):
  from dlpl_jax.training import loop as trainer  # pylint: disable=g-import-not-at-top
  c = _config(data_dir=fake_dir)
  _init_file(c, tmp_path / "init.npz")
  c.init_checkpoint = str(tmp_path / "init.npz")
  out = trainer.train_and_evaluate(c, str(tmp_path / "run"), stop_at=3)
  assert out["step"] == 3 and out["interrupted"]
  shutil.move(tmp_path / "init.npz", tmp_path / "moved.npz")  # the file is gone
  out = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert out["step"] == 6 and not out["interrupted"] and out["num_evals"] == 2
  assert out["final_top1"] is not None
  # A fresh run with the file gone is refused in one line.
  with pytest.raises(UsageError, match="is not a file"):
    trainer.train_and_evaluate(c, str(tmp_path / "other"))


# --- end to end through the command line ----------------------------------------------


def _main(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "dlpl_jax.main", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def _clip_csvs(fake_dir, tmp_path):
  c = _config(data_dir=fake_dir)
  meta = imagenet._read_meta(imagenet_fake.TRAIN, "train", fake_dir)  # pylint: disable=protected-access
  index = imagenet.imagefolder_order(meta["file_name"], meta["label"])
  rng = np.random.default_rng(0)
  probs = rng.uniform(0.1, 1.0, len(index))
  preds = np.where(rng.uniform(size=len(index)) < 0.8, meta["label"], (meta["label"] + 1) % 10)
  del c
  for name, sel in (("L.csv", probs >= 0.7), ("U.csv", probs < 0.7)):
    with open(tmp_path / name, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["Index", "PseudoLabel", "Probs"])
      for i, p, q in zip(index[sel], preds[sel], probs[sel]):
        w.writerow([int(i), int(p), f"{q:.4f}"])
  return str(tmp_path / "L.csv"), str(tmp_path / "U.csv")


def test_command_line_smoke_runs(fake_dir, tmp_path):
  """Every ImageNet config's smoke variant through ``python -m dlpl_jax.main``, the 1%
  one stopped after an epoch and resumed (four runs, about 55 s here)."""
  run = str(tmp_path / "run")
  base = ["--config=experiments/imagenet_1pct.py:smoke", f"--config.data_dir={fake_dir}",
          f"--workdir={run}"]
  first = _main(*base, "--config.imagenet.epochs=1")
  assert first.returncode == 0, first.stderr[-2000:]
  resumed = _main(*base, "--allow_config_change")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stderr and "done: 6 steps" in resumed.stderr
  r = _main("--config=experiments/imagenet_0p2pct.py:smoke", f"--config.data_dir={fake_dir}",
            f"--workdir={tmp_path / 'p2'}")
  assert r.returncode == 0 and "10 images" in r.stderr, r.stderr[-2000:]
  lab, unl = _clip_csvs(fake_dir, tmp_path)
  r = _main("--config=experiments/imagenet_clip_zeroshot.py:smoke",
            f"--config.data_dir={fake_dir}", f"--workdir={tmp_path / 'clip'}",
            f"--config.imagenet.clip_labeled={lab}", f"--config.imagenet.clip_unlabeled={unl}",
            f"--config.imagenet.index_cache={tmp_path / 'files.npz'}")
  assert r.returncode == 0 and "CLIP fallback >= 0.3" in r.stderr, r.stderr[-2000:]
  with open(tmp_path / "clip" / "metrics.jsonl") as f:
    assert "train/clip_rate" in f.read()


def test_bench_runs_the_views_step_and_reports_an_epoch():
  from dlpl_jax.tools import bench  # pylint: disable=g-import-not-at-top
  c = _config()  # no data read: synthetic views at the crop size
  r = bench.run_benchmark(c, steps=2, warmup=0, eval_steps=2, steps_per_epoch=10)
  assert (r["model"], r["num_views"], r["images_per_step"]) == ("cnn_small", 2, 4 + 2 * 2 * 8)
  assert r["eval_params"] == "student"
  assert math.isclose(r["epoch_s"], 10 * r["step_s_pipelined"])
  assert math.isclose(r["run_s"], 2 * r["epoch_s"])  # the smoke config's 2 epochs
  assert r["augment_s_median"] > 0 and "h per epoch" in bench.format_report(r)


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
from dlpl_jax.training import loop as trainer
c = configs.load_config_file("experiments/imagenet_1pct.py:smoke")
c.data_dir = data_dir
s = trainer.train_and_evaluate(c, workdir)
print("SUMMARY", s["step"], s["num_evals"], s["final_top1"], flush=True)
"""


@pytest.mark.slow
def test_two_processes_read_disjoint_parts_and_evaluate_every_image_once(fake_dir, tmp_path):
  """The ImageNet smoke config in two real processes (one CPU device each): both finish
  with the same summary; every evaluation counts each of the 40 validation images once
  (each process evaluates its part, padded); and the final checkpoint, restored in this
  one process, evaluates on the whole validation split to the same record."""
  from tests.test_multiprocess import _env, _port  # pylint: disable=g-import-not-at-top
  port, workdir = str(_port()), str(tmp_path / "run")
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_WORKER, str(i), port,
                             workdir, fake_dir], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  summaries = {out.split("SUMMARY")[1].strip() for out, _ in outs}
  assert len(summaries) == 1, summaries
  assert summaries.pop().split()[:2] == ["6", "2"]
  assert "2 process(es)" in outs[0][1] and "a disjoint part per process" in outs[0][1]
  evals = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))
           if '"kind": "eval"' in l]
  assert [r["step"] for r in evals] == [3, 6]
  for r in evals:
    assert sum(r["eval/predicted"]) == 40
  # The last evaluation, redone in one process on the restored checkpoint.
  from dlpl_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  c = _config(data_dir=fake_dir)
  model = train.build_model(c)
  template = train.create_train_state(c, model, (c.imagenet.crop_size,) * 2 + (3,),
                                      read_init=False)
  state, step = checkpoint.Checkpointer(workdir, 3, 3).restore_latest(template)
  assert step == 6
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.replicate(jax.device_get(state), mesh)
  ev = train.evaluate_batches(state, imagenet.eval_batches(c, (0, 1)), model=model,
                              num_classes=c.num_classes, batch=c.eval_batch_size,
                              mesh=mesh, params=configs.eval_params(c))
  assert sum(ev["eval/predicted"]) == 40
  assert ev["eval/predicted"] == evals[-1]["eval/predicted"]
  np.testing.assert_allclose(ev["eval/per_class"], evals[-1]["eval/per_class"], atol=1e-9)
  assert ev["eval/top1"] == pytest.approx(evals[-1]["eval/top1"], abs=1e-9)


def test_a_damaged_index_cache_is_one_line(tmp_path):
  c = configs.load_config_file(os.path.join(REPO, "experiments", "imagenet_1pct.py:smoke"))
  (tmp_path / "files.npz").write_bytes(b"\x00" * 64)
  c.imagenet.index_cache = str(tmp_path / "files.npz")
  with pytest.raises(UsageError, match=r"imagenet.index_cache: .* delete it to rebuild it"):
    imagenet.train_file_names(c)
