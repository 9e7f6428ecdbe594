"""dlpl_jax.data.imagenet on the fake ImageNet-shaped TFDS datasets (the conftest's
``fake_imagenet``): the labeled splits, the views and their sharding over processes,
torchvision's random-resized crop window, evaluation batches that count every
validation image once, ImageFolder's order, and a damaged index cache."""

import math

import numpy as np
import pytest

from dlpl_jax.data import imagenet
from dlpl_jax.errors import UsageError
from dlpl_jax.training import setup


@pytest.fixture
def spec(imagenet_config, fake_imagenet):
  """``spec(name="imagenet_1pct", **overrides)``: the ImageNetSpec of a smoke config
  reading the fake ImageNet."""
  def make(name="imagenet_1pct", **overrides):
    return setup.read(imagenet_config(name, data_dir=fake_imagenet, **overrides)).imagenet
  return make


def test_the_spec_is_read_from_the_config(spec, fake_imagenet):
  o = spec()
  assert (o.split, o.data_dir, o.train_name, o.subset_name) == (
      "1pct", fake_imagenet, "fake_imagenet", "fake_imagenet_subset/1pct")
  assert (o.num_classes, o.num_views, o.crop_size, o.eval_resize) == (10, 2, 32, 36)
  assert (o.batch_size, o.unlabeled_batch, o.eval_batch_size) == (4, 8, 20)
  assert imagenet.num_classes(o) == 10


def test_imagefolder_order_sorts_by_class_then_name():
  names = ["n2_b.JPEG", "n1_z.JPEG", "n2_a.JPEG", "n1_c.JPEG"]
  np.testing.assert_array_equal(imagenet.imagefolder_order(names, [1, 0, 1, 0]),
                                [3, 1, 2, 0])


def test_views_shapes_and_sharding(spec):
  o = spec()
  source, clip = imagenet.labeled_source(o)
  assert clip is None and source == imagenet.Labeled("fake_imagenet_subset/1pct", "train")
  lab = next(imagenet.labeled_stream(o, source, 0, (0, 1)))
  assert lab["image"].shape == (4, 32, 32, 3) and lab["image"].dtype == np.uint8
  parts = [next(imagenet.unlabeled_stream(o, 0, (i, 2))) for i in range(2)]
  for u in parts:  # each process: B * mu / 2 images, K = 2 weak and 2 strong crops
    assert u["weak"].shape == (2, 4, 32, 32, 3) and u["strong"].shape == (2, 4, 32, 32, 3)
    assert not np.array_equal(u["weak"][0], u["weak"][1])  # independent crops
  # Evaluation: every validation image once over the processes, same batch count.
  evs = [list(imagenet.eval_batches(o, (i, 3))) for i in range(3)]
  assert len({len(e) for e in evs}) == 1
  labels = np.concatenate([b["label"] for e in evs for b in e])
  assert (labels >= 0).sum() == 40 and all(b["image"].shape[1:] == (32, 32, 3)
                                           for e in evs for b in e)
  # eval_examples: the first N validation images only.
  labels = np.concatenate([b["label"] for b in imagenet.eval_batches(
      spec(eval_examples=25), (0, 1))])
  assert (labels >= 0).sum() == 25 and len(labels) == 40  # two batches of 20


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (64, 64), (10, 200),
                                   (200, 10), (30, 41), (41, 30)])
def test_crop_window_is_torchvisions(shape):
  """The window equals torchvision's ``RandomResizedCrop.get_params`` (transcribed
  below, float64) fed the same uniform draws, for 50 seeds per shape; the thin
  shapes exhaust the 10 attempts and take the ratio-clamped centre crop."""
  tf = imagenet._import_tf()[0]  # pylint: disable=protected-access
  h, w = shape

  def torchvision(u_area, u_ratio, u_pos, ratio=(3 / 4, 4 / 3)):
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
    # pylint: disable-next=protected-access
    window = imagenet._rrc_window(tf, tf.constant([h, w, 3]), seed, 0.08)
    got = [int(v) for v in window]
    want = torchvision(u_area, u_ratio, u_pos)
    assert got == want, (shape, i, got, want)
    fallbacks += want[2:] in ([h, round(h * 4 / 3)], [round(w * 4 / 3), w], [h, w])
  if min(h, w) * 20 <= max(h, w):  # no window of the allowed ratios fits
    assert fallbacks == 50


def test_0p2pct_draws_from_the_subset(spec):
  o = spec("imagenet_0p2pct")
  source, _ = imagenet.labeled_source(o)
  assert len(source.file_names) == 10  # round(0.2 * 5) = 1 per class
  assert sorted(source.targets.tolist()) == list(range(10))
  batch = next(imagenet.labeled_stream(o, source, 0, (0, 1)))
  assert set(batch["label"].tolist()) <= set(range(10))


def test_index_cache(spec, tmp_path):
  """The training split's file names and labels, written once to the cache and read
  from it after; a damaged cache is one line."""
  cache = tmp_path / "sub" / "files.npz"
  o = spec(**{"imagenet.index_cache": str(cache)})
  meta = imagenet.train_file_names(o)
  assert len(meta["file_name"]) == 120 and cache.is_file()
  np.testing.assert_array_equal(np.bincount(meta["label"]), [12] * 10)
  again = imagenet.train_file_names(o)
  np.testing.assert_array_equal(again["file_name"], meta["file_name"])
  np.savez(cache, other=np.zeros(3))
  with pytest.raises(UsageError, match=r"holds \['other'\], not this index"):
    imagenet.train_file_names(o)


def test_a_damaged_index_cache_is_one_line(imagenet_config, tmp_path):
  (tmp_path / "files.npz").write_bytes(b"\x00" * 64)
  o = setup.read(imagenet_config(**{"imagenet.index_cache":
                                    str(tmp_path / "files.npz")})).imagenet
  with pytest.raises(UsageError, match=r"imagenet.index_cache: .* delete it to rebuild it"):
    imagenet.train_file_names(o)


def test_clip_split(spec, tmp_path):
  """The pseudo-labeled set and the unlabeled set's CLIP targets from an .npz of
  logits, indexed in ImageFolder's order; an index beyond the split is one line."""
  # pylint: disable-next=protected-access
  meta = imagenet._read_meta("fake_imagenet", "train", spec().data_dir)
  by_index = np.empty(120, dtype=meta["file_name"].dtype)
  by_index[imagenet.imagefolder_order(meta["file_name"], meta["label"])] = meta["file_name"]
  logits = np.zeros((120, 10), np.float32)
  logits[np.arange(120), np.arange(120) % 10] = np.where(np.arange(120) < 30, 10.0, 0.5)
  np.savez(tmp_path / "clip.npz", logits=logits)
  o = spec(**{"imagenet.split": "clip", "imagenet.clip_labeled": str(tmp_path / "clip.npz"),
              "imagenet.index_cache": str(tmp_path / "files.npz")})
  labeled, clip = imagenet.labeled_source(o)
  np.testing.assert_array_equal(labeled.file_names, by_index[:30])  # confident: >= 0.95
  np.testing.assert_array_equal(labeled.targets, np.arange(30) % 10)
  np.testing.assert_array_equal(clip.file_names, by_index[30:])
  np.testing.assert_array_equal(clip.labels, np.arange(30, 120) % 10)
  assert clip.probs.dtype == np.float32 and (clip.probs < 0.95).all()
  np.savez(tmp_path / "clip.npz", logits=np.zeros((121, 10), np.float32))
  with pytest.raises(UsageError, match="index images up to 120, but the training split "
                     "has 120 images"):
    imagenet.labeled_source(o)
