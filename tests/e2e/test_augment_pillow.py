"""The strong view against the Pillow reference (benchmarks/pil_reference.py) over many
draws: 10 more batches of 14 x 16 real CIFAR-10 images, exact pixel for pixel (the
unit tier's tests/augment/test_randaugment.py checks two such batches)."""

import jax
import numpy as np

from benchmarks import pil_reference as R
from dlpl_jax import augment as A

B = 16


def test_strong_agrees_with_pil_many_draws(cifar_test_images):
  n = A.NUM_OPS * B
  images = np.concatenate([cifar_test_images] * A.NUM_OPS)
  for seed in range(10):
    p = A.sample_strong_params(jax.random.key(100 + seed), n)
    np.testing.assert_array_equal(np.asarray(A.apply_strong(images, p)),
                                  R.strong_views(images, p), err_msg=f"seed {100 + seed}")
