"""Tests for dlpl_jax.augment.views: the contract of the batched views ``weak`` and
``strong`` (shape, dtype, range, determinism, independence per image, uint8 == float
input, composition under jit), their refusal of images off the [0, 255] scale (NaN
under jit), and plausible views of real CIFAR-10.

Batch sizes are few and fixed (16 and 2), so the file compiles a handful of programs.
"""

import re

import jax
import numpy as np
import pytest

from dlpl_jax import augment as A

B = 16


def _noise_images(n=B, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_view_contract(view):
  fn = getattr(A, view)
  x = _noise_images(B, seed=2)
  key = jax.random.key(0)
  out = fn(key, x)
  assert out.shape == x.shape and out.dtype == np.float32
  out = np.asarray(out)
  assert out.min() >= 0 and out.max() <= 255
  # Deterministic for a key; different across keys.
  np.testing.assert_array_equal(out, np.asarray(fn(key, x)))
  assert not np.array_equal(out, np.asarray(fn(jax.random.key(1), x)))
  # uint8 and float inputs give the same views.
  np.testing.assert_array_equal(out, np.asarray(fn(key, x.astype(np.float32))))
  # Independent per image: one image repeated B times gives (mostly) distinct views.
  same = np.repeat(x[:1], B, axis=0)
  views = np.asarray(fn(key, same)).reshape(B, -1)
  assert len({v.tobytes() for v in views}) >= B // 2


def test_views_compose_with_outer_jit_and_raw_keys():
  """Inside an outer jit, with a legacy uint32[2] key: nothing needs concrete values.
  (weak/strong are themselves jitted, so test_view_contract already traces them; this
  checks composition, on the cheaper weak view.)"""
  x = _noise_images(4, seed=3)
  key = jax.random.PRNGKey(0)
  outer = jax.jit(lambda k, im: A.weak(k, im) / 255.0)
  np.testing.assert_allclose(np.asarray(outer(key, x)) * 255.0,
                             np.asarray(A.weak(key, x)), atol=1e-4)


_UNIT = _noise_images(2, seed=5).astype(np.float32) / 255  # [0, 1] floats


@pytest.mark.parametrize("view", ["weak", "strong"])
@pytest.mark.parametrize("images, message", [
    (_UNIT, "looks like [0, 1] images"),
    ((_UNIT - 0.5) / 0.25, "normalised"),
    (_noise_images(2, seed=5).astype(np.int16) * 4, "[0, 255]"),
    (np.zeros((0, 8, 8, 3), np.uint8), "at least one image"),
    (np.zeros((2, 1, 8, 3), np.uint8), "at least 2 x 2"),
    (np.zeros((2, 8, 8, 3), bool), "dtype bool"),
])
def test_views_refuse_images_off_the_0_255_scale(view, images, message):
  """Views of [0, 1] or normalised images would be silently wrong (Cutout paints 127,
  strong rounds [0, 1] to {0, 1}); such input is refused, not augmented."""
  with pytest.raises(ValueError, match=re.escape(message)):
    getattr(A, view)(jax.random.key(0), images)


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_views_under_jit_are_nan_for_images_off_the_scale(view):
  # One float32 batch of B images throughout: the outer jit compiles once, and the
  # uint8 view it is compared with is test_view_contract's (compiled already).
  fn = jax.jit(getattr(A, view))
  key = jax.random.key(0)
  x = _noise_images(B, seed=2)
  unit = x.astype(np.float32) / 255  # [0, 1] floats
  assert np.isnan(np.asarray(fn(key, unit))).all()
  assert np.isnan(np.asarray(fn(key, unit * 255 - 1))).all()  # one value below 0
  np.testing.assert_array_equal(np.asarray(fn(key, x.astype(np.float32))),
                                np.asarray(getattr(A, view)(key, x)))  # on the scale
  dark = np.zeros_like(x, np.float32)  # all <= 1 but integer: a black image, accepted
  assert np.isfinite(np.asarray(fn(key, dark))).all()


def test_views_of_cifar_test_images_are_plausible(cifar_test_images):
  key = jax.random.key(0)
  w = np.asarray(A.weak(key, cifar_test_images))
  s = np.asarray(A.strong(key, cifar_test_images))
  # weak only moves pixels: the same per-image value set up to reflection duplicates
  assert np.abs(w.mean((1, 2, 3)) - cifar_test_images.mean((1, 2, 3))).max() < 30
  # strong: a gray (127) cutout square (side 1..16, +1 for PIL's inclusive corners) is in
  # every image, and images are not blank
  assert ((s == 127).all(-1).sum((1, 2)) >= 1).all()
  assert (s.std((1, 2, 3)) > 5).mean() > 0.8


def test_randaugment_cutout_at_224():
  x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
  out = np.asarray(jax.jit(A.randaugment_cutout)(jax.random.PRNGKey(1), x))
  assert out.shape == x.shape and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
  assert not np.array_equal(out, x)
