"""dlpl_jax.data.splits: the labeled / unlabeled draws on synthetic labels (N per class,
CIFAR-LT with its three unlabeled profiles, a fraction of each class)."""

import numpy as np
import pytest

from dlpl_jax.data import splits


def _labels(per_class=(50,) * 10, seed=0):
  labels = np.repeat(np.arange(len(per_class)), per_class)
  return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def test_class_counts():
  np.testing.assert_array_equal(splits.class_counts([0, 2, 2, 3], 5), [1, 0, 2, 1, 0])
  with pytest.raises(ValueError):
    splits.class_counts([0, 5], 5)


def test_labeled_indices():
  labels = _labels()
  idx = splits.labeled_indices(labels, 4, seed=1)
  assert idx.size == 40 and np.unique(idx).size == 40
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), [4] * 10)
  np.testing.assert_array_equal(idx, splits.labeled_indices(labels, 4, seed=1))
  assert not np.array_equal(idx, splits.labeled_indices(labels, 4, seed=2))
  with pytest.raises(ValueError, match="class 3"):
    splits.labeled_indices(_labels((50, 50, 50, 3)), 4, seed=0)


def test_labeled_indices_num_classes():
  # An absent class is only noticed when num_classes says it should exist.
  labels = _labels((5, 5, 5))
  assert splits.labeled_indices(labels, 2, seed=0).size == 6
  with pytest.raises(ValueError, match="class 3"):
    splits.labeled_indices(labels, 2, seed=0, num_classes=4)


def test_long_tailed_counts_hand_computed():
  # mu = 0.01 ** (1/9) = 0.599484...; n_k = floor(n_max * mu**k), last = n_max / 100.
  assert splits.long_tailed_counts(1500, 100, 10) == [
      1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
  assert splits.long_tailed_counts(3000, 100, 10) == [
      3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]
  assert splits.long_tailed_counts(500, 1, 4) == [500] * 4
  with pytest.raises(ValueError):
    splits.long_tailed_counts(100, 0.5, 10)


@pytest.mark.parametrize("profile", ["long_tailed", "reversed", "balanced"])
def test_split_lt(profile):
  labels = _labels((400,) * 10)
  lab, unl = splits.split_lt(labels, 150, 200, 10, seed=0, unlabeled_profile=profile)
  assert np.intersect1d(lab, unl).size == 0
  assert np.unique(lab).size == lab.size and np.unique(unl).size == unl.size
  lt_lab = splits.long_tailed_counts(150, 10, 10)
  lt_unl = splits.long_tailed_counts(200, 10, 10)
  expected_unl = {"long_tailed": lt_unl, "reversed": lt_unl[::-1],
                  "balanced": [200] * 10}[profile]
  np.testing.assert_array_equal(splits.class_counts(labels[lab], 10), lt_lab)
  np.testing.assert_array_equal(splits.class_counts(labels[unl], 10), expected_unl)
  lab2, unl2 = splits.split_lt(labels, 150, 200, 10, seed=0, unlabeled_profile=profile)
  np.testing.assert_array_equal(lab, lab2)
  np.testing.assert_array_equal(unl, unl2)


def test_split_lt_reversed_is_mirror_and_errors():
  labels = _labels((400,) * 10)
  _, fwd = splits.split_lt(labels, 100, 300, 100, seed=3)
  _, rev = splits.split_lt(labels, 100, 300, 100, seed=3, unlabeled_profile="reversed")
  np.testing.assert_array_equal(splits.class_counts(labels[rev], 10),
                                splits.class_counts(labels[fwd], 10)[::-1])
  with pytest.raises(ValueError, match="class 0"):  # 150 + 300 > 400
    splits.split_lt(labels, 150, 300, 100, seed=0)
  with pytest.raises(ValueError, match="unlabeled_profile"):
    splits.split_lt(labels, 10, 10, 10, seed=0, unlabeled_profile="uniform")


def test_draw_fraction_counts_and_seed():
  labels = np.repeat(np.arange(4), [5, 12, 13, 8])
  a = splits.draw_fraction(labels, 0.2, seed=3, num_classes=4)
  np.testing.assert_array_equal(np.bincount(labels[a], minlength=4), [1, 2, 3, 2])
  np.testing.assert_array_equal(a, splits.draw_fraction(labels, 0.2, 3, 4))
  assert not np.array_equal(a, splits.draw_fraction(labels, 0.2, 4, 4))


def test_draw_fraction_refuses_an_empty_class_and_a_bad_fraction():
  with pytest.raises(ValueError, match="class 2 has no image"):
    splits.draw_fraction([0, 1, 3], 0.2, 0, 4)
  for fraction in (0, 1.5):
    with pytest.raises(ValueError, match="fraction must be in"):
      splits.draw_fraction([0, 1], fraction, 0, 2)
