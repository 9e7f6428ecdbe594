"""FixMatch's weak and strong views of a batch, jitted, and their input checks.

The two functions the trainer calls::

  weak(key, images)    # [B, H, W, 3] uint8 or float in [0, 255] -> float32 [B, H, W, 3]
  strong(key, images)  # same contract

Both draw independent randomness per image (the key is split into ``B`` keys and the
per-image function is vmapped), contain no Python branching on array values, are
deterministic for a given key, and return float32 values in [0, 255] (integers, as
from a uint8 image). ``strong`` rounds float inputs to the nearest integer first (the
reference works on uint8 PIL images), so a uint8 image and its float copy give the same
views; ``weak`` only moves pixels and keeps values as they are. Input off the [0, 255]
scale (normalised, or [0, 1] floats) is refused with a ValueError, or gives NaN under
``jax.jit``, rather than views of the wrong scale.

:func:`apply_weak` / :func:`apply_strong` give the views for given draws (from
:func:`~dlpl_jax.augment.randaugment.sample_weak_params` /
:func:`~dlpl_jax.augment.randaugment.sample_strong_params`), and
:func:`randaugment_cutout` the strong view's RandAugment and Cutout alone, on crops
made on the host (ImageNet).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlpl_jax.augment.pillow import PAD_FRACTION
from dlpl_jax.augment.randaugment import _strong_one
from dlpl_jax.augment.randaugment import _weak_one
from dlpl_jax.augment.randaugment import sample_strong_params
from dlpl_jax.augment.randaugment import sample_weak_params
from dlpl_jax.augment.randaugment import StrongParams
from dlpl_jax.augment.randaugment import WeakParams

# ----------------------------------------------------------------------------------
# Input: conversion to an image and checks.

def _to_image(images) -> jax.Array:
  """float32, rounded to integers and clipped to [0, 255] (uint8 semantics)."""
  x = jnp.asarray(images)
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.clip(x, 0, 255).astype(jnp.float32)
  return jnp.clip(jnp.round(x.astype(jnp.float32)), 0.0, 255.0)


def _check_images(images) -> None:
  """Static checks: ``[B >= 1, H >= 2, W >= 2, 3]``, a real or integer dtype."""
  shape = jnp.shape(images)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3], got shape {shape}")
  if shape[0] == 0:
    raise ValueError(f"images must hold at least one image, got shape {shape}")
  if min(shape[1:3]) < 2:
    raise ValueError(f"images must be at least 2 x 2 pixels, got shape {shape}")
  dtype = jnp.result_type(images)
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(f"images must be uint8 or float in [0, 255], got dtype {dtype}")


def _range_ok(x: jax.Array) -> jax.Array:
  """Whether a non-uint8 batch is on the [0, 255] scale: every value in [0, 255], and
  not the look of [0, 1] images (all values <= 1 with some fractional); a scalar bool."""
  in_range = jnp.all((x >= 0) & (x <= 255))
  if jnp.issubdtype(x.dtype, jnp.integer):
    return in_range
  unit_scale = jnp.all(x <= 1) & jnp.any(x != jnp.round(x))
  return in_range & ~unit_scale


def _check_values(images) -> None:
  """Refuses a concrete (not traced) batch off the [0, 255] scale (see :func:`_range_ok`);
  uint8 needs no look at the values. A traced batch is checked in the jitted view,
  which comes out NaN where this would raise."""
  if jnp.result_type(images) == jnp.uint8 or isinstance(images, jax.core.Tracer):
    return
  if bool(_range_ok(jnp.asarray(images))):  # one scalar leaves the device
    return
  x = np.asarray(jax.device_get(images))
  lo, hi = x.min(), x.max()
  hint = (" (it looks like [0, 1] images: multiply by 255)" if 0 <= lo and hi <= 1 else
          " (normalised images? augment before normalising)" if lo < 0 else "")
  raise ValueError(f"images must be uint8 or values in [0, 255], got values in "
                   f"[{lo}, {hi}]{hint}")


def _poison(out: jax.Array, images) -> jax.Array:
  """``out`` where the input batch is on the [0, 255] scale, else all NaN (traced input
  cannot raise); uint8 input is returned unchanged at no cost."""
  x = jnp.asarray(images)
  if x.dtype == jnp.uint8:
    return out
  return jnp.where(_range_ok(x), out, jnp.nan)


# ----------------------------------------------------------------------------------
# The batched, vmapped views.

@jax.jit
def apply_weak(images, params: WeakParams) -> jax.Array:
  """Weak view of ``images`` [B, H, W, 3] with given per-image params -> float32 [B, H, W, 3]."""
  _check_images(images)
  x = jnp.asarray(images).astype(jnp.float32)
  return jax.vmap(_weak_one)(x, params)


@jax.jit
def apply_strong(images, params: StrongParams) -> jax.Array:
  """Strong view with given per-image params: flip + crop, RandAugment(2 ops), Cutout.

  Args:
    images: ``[B, H, W, 3]`` uint8 or float in [0, 255] (floats are rounded).
    params: from :func:`sample_strong_params`.

  Returns:
    float32 ``[B, H, W, 3]``, integer values in [0, 255].
  """
  _check_images(images)
  return jax.vmap(_strong_one)(_to_image(images), params)


@jax.jit
def _weak_jit(key, images) -> jax.Array:
  b, h, w, _ = jnp.shape(images)
  return _poison(apply_weak(images, sample_weak_params(key, b, h, w)), images)


@jax.jit
def _strong_jit(key, images) -> jax.Array:
  b, h, w, _ = jnp.shape(images)
  return _poison(apply_strong(images, sample_strong_params(key, b, h, w)), images)


def weak(key, images) -> jax.Array:
  """FixMatch weak view: random horizontal flip, then a random translation by up to 12.5%
  of the side (4 px on 32x32) with reflect padding; independent per image.

  Args:
    key: a JAX PRNG key.
    images: ``[B, H, W, 3]``, ``B >= 1``, ``H, W >= 2``: uint8, or integers / floats
      on the same [0, 255] scale.

  Returns:
    float32 ``[B, H, W, 3]`` in [0, 255].

  Raises:
    ValueError: a wrong shape or dtype; concrete (not traced) values outside [0, 255],
      or a float batch that looks like [0, 1] images (every value <= 1, some
      fractional). Under ``jax.jit`` such a batch comes out all NaN instead.
  """
  _check_images(images)
  _check_values(images)
  return _weak_jit(key, images)


def strong(key, images) -> jax.Array:
  """FixMatch strong view (kekmodel RandAugmentMC(2, 10) + Cutout of random side up to
  half the image, after flip + crop); independent per image.

  Args:
    key: a JAX PRNG key.
    images: ``[B, H, W, 3]``, ``B >= 1``, ``H, W >= 2``: uint8, or integers / floats
      on the same [0, 255] scale (floats are rounded).

  Returns:
    float32 ``[B, H, W, 3]``, integer values in [0, 255].

  Raises:
    ValueError: as :func:`weak` (under ``jax.jit``, NaN output instead).
  """
  _check_images(images)
  _check_values(images)
  return _strong_jit(key, images)


def randaugment_cutout(key: jax.Array, images) -> jax.Array:
  """The strong view's pixel ops alone on host-made crops: RandAugment (2 ops) and
  Cutout of :func:`strong`, without its flip and translation (the host's
  random-resized crop and flip replace them).

  Args:
    key: PRNG key; images: ``[B, H, W, 3]`` uint8.

  Returns:
    float32 ``[B, H, W, 3]``, integer values in [0, 255].
  """
  b, h, w, _ = images.shape
  p = sample_strong_params(key, b, h, w)
  py, px = int(h * PAD_FRACTION), int(w * PAD_FRACTION)
  still = WeakParams(flip=jnp.zeros((b,), bool), dy=jnp.full((b,), py, jnp.int32),
                     dx=jnp.full((b,), px, jnp.int32))  # the identity crop
  return apply_strong(images, p._replace(weak=still))
