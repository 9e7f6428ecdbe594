"""The full compact copy of CIFAR-10 (``data/cifar10_compact.npz``, made with
``dlpl-compact-data --out data/cifar10_compact.npz``): it holds CIFAR-10 exactly and
selects the same labeled / unlabeled sets as the prepared TFDS copy. Skipped where the
file has not been made (the coding takes minutes)."""

import os

import numpy as np
import pytest

from dlpl_jax.data import in_memory

FULL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "data", "cifar10_compact.npz")


def test_full_compact_copy_equals_tfds(cifar_dir):
  if not os.path.isfile(FULL):
    pytest.skip(f"{FULL} not made (dlpl-compact-data --out {FULL})")
  via_npz = in_memory.load(in_memory.DataSpec("cifar10", 10, FULL))
  via_tfds = in_memory.load(in_memory.DataSpec("cifar10", 10, cifar_dir))
  for a, b in zip(via_npz, via_tfds):
    np.testing.assert_array_equal(a, b)
