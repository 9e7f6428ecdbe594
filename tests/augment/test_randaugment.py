"""Tests for dlpl_jax.augment.randaugment: the per-image draws (their ranges and
frequencies) and the per-image views they drive, which equal the Pillow reference
(benchmarks/pil_reference.py) pixel for pixel on real CIFAR-10 given the same draws.

The views are run through their batched wrappers ``apply_weak`` / ``apply_strong``
(dlpl_jax.augment.views), at one batch size each, so that they compile once. The same
agreement over many more draws is in tests/e2e/test_augment_pillow.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import pil_reference as R
from dlpl_jax import augment as A

B = 16  # real images; the strong checks run A.NUM_OPS * B of them in one batch


def _draws(sample, seed, batch, calls):
  """``calls`` draws of ``batch`` images, concatenated: the sampler compiled for the
  batch size of the agreement tests below serves (a new size would compile anew)."""
  keys = jax.random.split(jax.random.key(seed), calls)
  return jax.tree.map(lambda *a: np.concatenate(a),
                      *[jax.tree.map(np.asarray, sample(k, batch)) for k in keys])


def test_weak_param_distribution():
  # The draws cover flips and the full -4..4 px range (offsets 0..8 into the padded image).
  p = _draws(A.sample_weak_params, 1, B, 32)  # 512 images
  assert set(p.dy) == set(range(9)) == set(p.dx)
  assert 0.4 < p.flip.mean() < 0.6


def test_strong_param_distribution():
  p = _draws(A.sample_strong_params, 3, A.NUM_OPS * B, 19)  # 4256 images
  counts = np.bincount(p.ops.ravel(), minlength=A.NUM_OPS)
  assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
  assert set(p.levels.ravel()) == set(range(1, 10))
  assert 0.45 < p.apply.mean() < 0.55 and 0.45 < p.negate.mean() < 0.55
  assert p.cut_cx.min() >= 0 and p.cut_cx.max() < 32 and p.cut_cy.max() < 32
  assert p.cut_size.min() >= 1 and p.cut_size.max() <= 16 and len(set(p.cut_size.tolist())) > 4
  assert not np.array_equal(p.ops[:, 0], p.ops[:, 1])


def test_weak_agrees_with_pil(cifar_test_images):
  p = A.sample_weak_params(jax.random.key(0), B)
  out = np.asarray(A.apply_weak(cifar_test_images, p))
  pn = jax.tree.map(np.asarray, p)
  ref = np.stack([R.weak_view(cifar_test_images[i], pn.flip[i], pn.dy[i], pn.dx[i])
                  for i in range(B)])
  np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("forced", [False, True])
def test_strong_agrees_with_pil(cifar_test_images, forced):
  """The whole strong view equals Pillow given the same draws: exact (the affine
  matrices are tabulated in float64, unlike the single-image ops of test_ops.py).

  forced=True puts each of the 14 ops in slot 1 (applied) on all 16 images, so that
  every op is exercised inside the pipeline; forced=False uses the sampled draws.
  """
  n = A.NUM_OPS * B
  images = np.concatenate([cifar_test_images] * A.NUM_OPS)
  p = A.sample_strong_params(jax.random.key(7 if forced else 8), n)
  if forced:
    p = p._replace(ops=p.ops.at[:, 0].set(jnp.repeat(jnp.arange(A.NUM_OPS), B)),
                   apply=p.apply.at[:, 0].set(True))
  out = np.asarray(A.apply_strong(images, p))
  ref = R.strong_views(images, p)
  bad = np.nonzero((out != ref).any(axis=(1, 2, 3)))[0]
  assert bad.size == 0, [(int(i), [A.OP_NAMES[o] for o in np.asarray(p.ops[i])])
                         for i in bad[:5]]
