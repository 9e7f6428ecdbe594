"""dlpl_jax.data.in_memory: the splits a run trains on (:class:`DataSpec` ->
:class:`SSLData`): the balanced and long-tailed selections, the first N test images,
the compact copy read with NumPy alone (the same selection as from TFDS, no TensorFlow
imported), and the refusals of a file or dataset that does not fit the config."""

import dataclasses

import numpy as np
import pytest

from dlpl_jax.data import compact as cd
from dlpl_jax.data import in_memory
from dlpl_jax.data import splits
from dlpl_jax.errors import UsageError
from dlpl_jax.training import setup


def _spec(data_dir="", **kw):
  return dataclasses.replace(in_memory.DataSpec("cifar10", 10, data_dir), **kw)


def test_the_spec_is_read_from_the_config(tiny_config):
  assert setup.read(tiny_config(data_dir="d.npz")).data == in_memory.DataSpec(
      "cifar10", 10, "d.npz", labels_per_class=4, labeled_seed=0, lt=None, eval_examples=0)
  lt = setup.read(tiny_config(**{"lt.enabled": True, "lt.n1": 15, "lt.m1": 30,
                                 "lt.gamma": 10.0, "lt.unlabeled_profile": "reversed",
                                 "eval_examples": 7, "labeled_seed": 3})).data
  assert lt.lt == in_memory.LongTail(15, 30, 10.0, "reversed")
  assert (lt.eval_examples, lt.labeled_seed) == (7, 3)


def test_select_balanced_and_long_tailed(mixed_images):
  x, y = mixed_images(400)
  xt, yt = mixed_images(30, seed=1)
  d = in_memory.select(_spec(labels_per_class=3, labeled_seed=2), x, y, xt, yt)
  idx = splits.labeled_indices(y, 3, 2, 10)
  np.testing.assert_array_equal(d.x_l, x[idx])
  np.testing.assert_array_equal(d.y_l, y[idx])
  np.testing.assert_array_equal(d.x_u, x)  # the whole training split is unlabeled
  np.testing.assert_array_equal(d.y_u, y)
  np.testing.assert_array_equal(d.x_test, xt)
  assert {a.dtype for a in (d.y_l, d.y_u, d.y_test)} == {np.dtype(np.int32)}
  assert d.describe(10).startswith("labeled 30 (per class [3, 3, 3, 3")
  assert "unlabeled 400" in d.describe(10) and d.describe(10).endswith("test 30")
  # Long-tailed: the disjoint draws of split_lt; the first N test images with N > 0.
  lt = _spec(lt=in_memory.LongTail(10, 20, 5.0, "balanced"), eval_examples=7)
  d = in_memory.select(lt, x, y, xt, yt)
  li, ui = splits.split_lt(y, 10, 20, 5.0, 0, "balanced", 10)
  np.testing.assert_array_equal(d.y_l, y[li])
  np.testing.assert_array_equal(d.x_u, x[ui])
  np.testing.assert_array_equal(np.bincount(d.y_u, minlength=10), [20] * 10)
  np.testing.assert_array_equal(d.x_test, xt[:7])
  np.testing.assert_array_equal(d.y_test, yt[:7])


def test_synthetic_is_seeded_and_balanced():
  a = in_memory.synthetic(num_classes=5, labeled_per_class=2, unlabeled=20, test=10,
                          image_size=16, seed=1)
  b = in_memory.synthetic(num_classes=5, labeled_per_class=2, unlabeled=20, test=10,
                          image_size=16, seed=1)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert a.x_l.shape == (10, 16, 16, 3) and a.x_l.dtype == np.uint8
  assert a.x_u.shape == (20, 16, 16, 3) and a.x_test.shape == (10, 16, 16, 3)
  np.testing.assert_array_equal(np.bincount(a.y_l, minlength=5), [2] * 5)
  np.testing.assert_array_equal(np.bincount(a.y_u, minlength=5), [4] * 5)


def test_loader_reads_compact_and_refuses_mismatch(tmp_path, tiny_config, mixed_images):
  x, y = mixed_images(200)
  path = str(tmp_path / "c.npz")
  cd.write(path, {"train": (x, y), "test": (x[:50], y[:50])}, "cifar10")
  got = in_memory.load(_spec(path))
  want = in_memory.select(_spec(path), x, y, x[:50], y[:50])
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(UsageError, match="holds 'cifar10'"):
    in_memory.load(in_memory.DataSpec("cifar100", 100, path))
  # A compact file is read into memory: streaming it is refused with the config.
  with pytest.raises(UsageError, match="in_memory"):
    setup.read(tiny_config(data_dir=path, in_memory=False))
  # A file whose labels hold fewer classes than the config's.
  cd.write(path, {"train": (x, y % 5), "test": (x[:50], y[:50] % 5)}, "cifar10")
  with pytest.raises(UsageError, match="cifar10 has 5 classes but config.num_classes = 10"):
    in_memory.load(_spec(path))


def test_loader_without_data_names_tfds_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR"):
    in_memory.load(_spec(str(tmp_path)))
  with pytest.raises(cd.CompactDataError, match="does not exist"):
    in_memory.load(_spec(str(tmp_path / "absent.npz")))


def test_loader_needs_no_tensorflow(tmp_path, python, hide_extras, mixed_images):
  x, y = mixed_images(100)
  path = str(tmp_path / "c.npz")
  cd.write(path, {"train": (x, y), "test": (x[:20], y[:20])}, "cifar10")
  proc = python(["-c", f"""
      import sys
      from dlpl_jax.data import in_memory
      d = in_memory.load(in_memory.DataSpec("cifar10", 10, {path!r}, labels_per_class=4))
      bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow",
                                                          "tensorflow_datasets", "PIL")]
      assert not bad, bad
      print(d.x_l.shape, d.x_u.shape, d.x_test.shape)
      """], timeout=120, prelude=hide_extras)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "(40, 32, 32, 3) (100, 32, 32, 3) (20, 32, 32, 3)"
