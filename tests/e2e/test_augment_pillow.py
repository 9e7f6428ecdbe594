"""The strong view against the Pillow reference (benchmarks/pil_reference.py) over many
draws: 10 more batches of 14 x 16 real CIFAR-10 images, exact pixel for pixel (the
unit tier's tests/augment/test_randaugment.py checks two such batches)."""

import jax
import numpy as np
import pytest

from benchmarks import pil_reference as R
from dlpl_jax import augment as A

B = 16


@pytest.fixture(scope="module")
def real_images(cifar_dir) -> np.ndarray:
  """16 real CIFAR-10 test images, uint8 [16, 32, 32, 3]; skips without the data."""
  tfds = pytest.importorskip("tensorflow_datasets")
  ds = tfds.load("cifar10", split=f"test[:{B}]", batch_size=-1, download=False,
                 data_dir=cifar_dir)
  images = tfds.as_numpy(ds)["image"]
  assert images.shape == (B, 32, 32, 3) and images.dtype == np.uint8
  return images


def _strong_ref(images, p):
  p = jax.tree.map(np.asarray, p)
  return np.stack([
      R.strong_view(images[i], p.weak.flip[i], p.weak.dy[i], p.weak.dx[i], p.ops[i],
                    p.levels[i], p.apply[i], p.negate[i], p.cut_cx[i], p.cut_cy[i],
                    p.cut_size[i])
      for i in range(len(images))])


def test_strong_agrees_with_pil_many_draws(real_images):
  n = A.NUM_OPS * B
  images = np.concatenate([real_images] * A.NUM_OPS)
  for seed in range(10):
    p = A.sample_strong_params(jax.random.key(100 + seed), n)
    np.testing.assert_array_equal(np.asarray(A.apply_strong(images, p)),
                                  _strong_ref(images, p), err_msg=f"seed {100 + seed}")
