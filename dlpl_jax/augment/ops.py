"""Single-image primitives and the 14 RandAugment ops, Pillow-exact, in JAX.

The primitives (``histogram``, the per-channel LUTs and ``apply_lut``, ``luma``,
``blend``, ``smooth``, ``affine_fixed``, ``cutout``) are what the per-image views of
:mod:`dlpl_jax.augment.randaugment` are built from; the 14 public ops (:data:`OPS`,
``fn(image, magnitude) -> image``) apply one op each with its natural argument, for
tests and single-image use.

Exactness: every op reproduces Pillow's integer arithmetic (16.16 fixed-point affine
nearest sampling, the 601-2 luma ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``, the
float32 blend and truncation of ``Image.blend``, the 3x3 SMOOTH filter with copied
border, ``ImageOps.equalize``'s integer LUT, ``autocontrast``'s double-precision LUT via
a small table of the entries where float64 rounding lands one below the exact value).
``strong`` with the parameters of :func:`sample_strong_params` equals Pillow applied
with the same parameters, pixel for pixel (``tests/augment/test_randaugment.py`` checks
it on real CIFAR-10). The single-image op functions that take a float magnitude
(``rotate``, ``shear_x``, ...) compute their fixed-point matrix in float32, which can move a sample
by one fixed-point unit relative to Pillow's double: a rare single-pixel difference.

Shapes: "image" below means float32 ``[H, W, 3]`` holding integers in [0, 255];
"images" means ``[B, H, W, 3]``. Magnitude arguments are scalars (traced or not).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from dlpl_jax.augment.pillow import _AUTOCONTRAST_MAX_FIXES
from dlpl_jax.augment.pillow import _autocontrast_fixes
from dlpl_jax.augment.pillow import AFFINE_FILL
from dlpl_jax.augment.pillow import CUTOUT_FILL

# ----------------------------------------------------------------------------------
# Single-image primitives. image: float32 [H, W, 3], integer values in [0, 255].

def _channel_offsets(c: int) -> jax.Array:
  return jnp.arange(c, dtype=jnp.int32) * 256


def apply_lut(img: jax.Array, lut: jax.Array) -> jax.Array:
  """Per-channel lookup: ``out[..., c] = lut[c, img[..., c]]``.

  Args:
    img: image ``[H, W, C]`` (integer values 0..255).
    lut: ``[C, 256]``.

  Returns:
    float32 ``[H, W, C]``.
  """
  idx = img.astype(jnp.int32) + _channel_offsets(img.shape[-1])
  return jnp.take(lut.reshape(-1).astype(jnp.float32), idx, mode="clip")


def _histogram_flat(img: jax.Array) -> jax.Array:
  """Histogram of ``[..., H, W, C]`` -> int32 ``[..., C, 256]`` as one 1-D scatter-add."""
  lead, c = img.shape[:-3], img.shape[-1]
  nb = math.prod(lead)
  v = img.reshape(nb, -1, c).astype(jnp.int32)
  bins = (jnp.arange(nb, dtype=jnp.int32)[:, None, None] * c
          + jnp.arange(c, dtype=jnp.int32)) * 256
  h = jnp.zeros((nb * c * 256,), jnp.int32).at[(v + bins).reshape(-1)].add(1, mode="drop")
  return h.reshape(lead + (c, 256))


@jax.custom_batching.custom_vmap
def _histogram(img):
  return _histogram_flat(img)


@_histogram.def_vmap
def _histogram_vmap(axis_size, in_batched, img):
  # Under vmap, jnp's scatter would carry the batch index as an extra index column
  # (a materialised [B*H*W*C, 2] array); one flat scatter over the batch is ~1.6x faster.
  del axis_size
  return _histogram_flat(img), in_batched[0]


def histogram(img: jax.Array) -> jax.Array:
  """Per-channel 256-bin histogram, int32 ``[C, 256]`` of an image ``[H, W, C]``."""
  return _histogram(img)


def _floordiv(a: jax.Array, b: jax.Array) -> jax.Array:
  """Exact ``a // b`` for int32 ``|a| < 2^22``, ``0 < b``: a float estimate corrected by
  one step each way. (XLA vectorises this on CPU, not an integer division; the float
  quotient alone can be off by one since XLA may divide via a reciprocal.)"""
  q = jnp.floor(a.astype(jnp.float32) / b.astype(jnp.float32)).astype(jnp.int32)
  q = q + ((q + 1) * b <= a).astype(jnp.int32)
  return q - (q * b > a).astype(jnp.int32)


def _cumulative(hist: jax.Array):
  """(count <= i ``[C, 256]``, pixels per channel ``[C]``, lo ``[C]``, hi ``[C]``) where
  lo / hi are the first / last non-empty bins."""
  cum = jnp.cumsum(hist, axis=-1)
  n = cum[:, -1]
  lo = jnp.sum(cum == 0, axis=-1, dtype=jnp.int32)
  hi = jnp.sum(cum < n[:, None], axis=-1, dtype=jnp.int32)
  return cum, n, lo, hi


def _autocontrast_lut(lo: jax.Array, hi: jax.Array) -> jax.Array:
  i = jnp.arange(256, dtype=jnp.int32)[None, :]
  q = _floordiv(255 * (i - lo[:, None]), jnp.maximum(hi - lo, 1)[:, None])
  offsets, values = (jnp.asarray(a) for a in _autocontrast_fixes())
  pair = lo * 256 + hi                                          # [C]
  start = jnp.take(offsets, pair, mode="clip")
  count = jnp.take(offsets, pair + 1, mode="clip") - start
  j = jnp.arange(_AUTOCONTRAST_MAX_FIXES, dtype=jnp.int32)
  fixes = jnp.take(values, start[:, None] + j, mode="clip")     # [C, 17]
  fixes = jnp.where(j < count[:, None], fixes, 256)             # 256: dropped below
  rows = jnp.broadcast_to(jnp.arange(lo.shape[0])[:, None], fixes.shape)
  q = q.at[rows, fixes].add(-1, mode="drop")
  return jnp.where((hi > lo)[:, None], jnp.clip(q, 0, 255), i)


def _equalize_lut(hist, cum, n, lo, hi) -> jax.Array:
  i = jnp.arange(256, dtype=jnp.int32)[None, :]
  below = cum - hist                                            # pixels < i
  last = n - jnp.take_along_axis(below, hi[:, None], axis=-1)[:, 0]  # count of the max
  step = (n - last) // 255
  safe = jnp.maximum(step, 1)[:, None]
  lut = jnp.minimum(_floordiv(safe // 2 + below, safe), 255)  # point() clips to 8 bits
  return jnp.where(((hi == lo) | (step == 0))[:, None], i, lut)


def autocontrast_lut(hist: jax.Array) -> jax.Array:
  """``PIL.ImageOps.autocontrast`` (cutoff 0) LUT ``[C, 256]`` from a histogram ``[C, 256]``.

  The exact stretch ``(255 (i - lo)) // (hi - lo)``, minus one at the entries where
  Pillow's float64 ``int(i * scale + offset)`` falls just below the exact integer (at
  most 17 per (lo, hi) pair, from a table: see ``_autocontrast_fixes``).
  """
  _, _, lo, hi = _cumulative(hist)
  return _autocontrast_lut(lo, hi)


def equalize_lut(hist: jax.Array) -> jax.Array:
  """``PIL.ImageOps.equalize`` LUT ``[C, 256]`` (integer arithmetic) from a histogram."""
  return _equalize_lut(hist, *_cumulative(hist))


def posterize_lut(bits, channels: int = 3) -> jax.Array:
  """``PIL.ImageOps.posterize`` LUT ``[C, 256]``: keep the top ``bits`` bits (1..8)."""
  i = jnp.arange(256, dtype=jnp.int32)
  shift = 8 - jnp.asarray(bits, jnp.int32)
  lut = jnp.left_shift(jnp.right_shift(i, shift), shift)
  return jnp.broadcast_to(lut, (channels, 256))


def solarize_lut(threshold, channels: int = 3) -> jax.Array:
  """``PIL.ImageOps.solarize`` LUT ``[C, 256]``: ``i if i < threshold else 255 - i``."""
  i = jnp.arange(256, dtype=jnp.int32)
  lut = jnp.where(i < jnp.asarray(threshold, jnp.int32), i, 255 - i)
  return jnp.broadcast_to(lut, (channels, 256))


def luma(img: jax.Array) -> jax.Array:
  """PIL's RGB -> "L" conversion, float32 ``[H, W]``:
  ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``."""
  x = img.astype(jnp.int32)
  l = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 32768) >> 16
  return l.astype(jnp.float32)


def _mean_luma(l: jax.Array) -> jax.Array:
  """``int(ImageStat.Stat(L).mean + 0.5)`` exactly, as an integer-valued float32 scalar."""
  n = l.size
  s = jnp.sum(l.astype(jnp.int32))
  return ((2 * s + n) // (2 * n)).astype(jnp.float32)


def smooth(img: jax.Array) -> jax.Array:
  """``img.filter(ImageFilter.SMOOTH)``: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, rounded;
  the one-pixel border is copied from the input (as Pillow does). ``[H, W, C]``.

  Pillow sums ``x * (k / 13)`` in float32 and rounds half up. The exact value is n/13
  for an integer n, never closer than 1/26 to a rounding boundary, far above float32
  error, so ``floor((n + 6.5) / 13)`` from the integer box sum gives the same result.
  """
  h, w = img.shape[:2]
  rows = img[:, :-2] + img[:, 1:-1] + img[:, 2:]
  n = rows[:-2] + rows[1:-1] + rows[2:] + 4.0 * img[1:-1, 1:-1]
  inner = jnp.pad(jnp.floor((n + 6.5) / 13.0), ((1, 1), (1, 1), (0, 0)))
  ys = jnp.arange(h)[:, None, None]
  xs = jnp.arange(w)[None, :, None]
  border = (ys == 0) | (ys == h - 1) | (xs == 0) | (xs == w - 1)
  return jnp.where(border, img, inner)


def blend(img: jax.Array, degenerate, factor) -> jax.Array:
  """``Image.blend(degenerate, img, factor)``: ``floor(clip(deg + f * (img - deg), 0, 255))``
  in float32, as Pillow (truncation to uint8; clipping when extrapolating)."""
  f = jnp.asarray(factor, jnp.float32)
  prod = f * (img - degenerate)
  # Pillow rounds the product to float32 before the add. XLA would contract the two into
  # one FMA (a single rounding), which moves ~1e-4 of the pixels by one level; a clamp
  # between them (a no-op on these values) keeps the two roundings.
  prod = jnp.clip(prod, -1e30, 1e30)
  return jnp.floor(jnp.clip(degenerate + prod, 0.0, 255.0))


def affine_fixed(img: jax.Array, fix, fill: float = AFFINE_FILL) -> jax.Array:
  """Pillow's nearest-neighbour AFFINE transform in 16.16 fixed point.

  Args:
    img: image ``[H, W, C]``.
    fix: int32 ``[6]`` = ``FIX(a), FIX(b), FIX(c + a/2 + b/2), FIX(d), FIX(e),
      FIX(f + d/2 + e/2)`` with ``FIX(v) = floor(65536 v + 0.5)``.
    fill: value of pixels that sample outside the input.

  Returns:
    ``[H, W, C]``: ``out[y, x] = img[sy >> 16, sx >> 16]`` with ``sx = fix[2] + x fix[0]
    + y fix[1]``, ``sy = fix[5] + x fix[3] + y fix[4]``.
  """
  h, w, c = img.shape
  fix = jnp.asarray(fix, jnp.int32)
  ys = jnp.arange(h, dtype=jnp.int32)[:, None]
  xs = jnp.arange(w, dtype=jnp.int32)[None, :]
  ix = jnp.right_shift(fix[2] + xs * fix[0] + ys * fix[1], 16)
  iy = jnp.right_shift(fix[5] + xs * fix[3] + ys * fix[4], 16)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  idx = jnp.clip(iy, 0, h - 1) * w + jnp.clip(ix, 0, w - 1)
  out = jnp.take(img.reshape(h * w, c), idx, axis=0, mode="clip")
  return jnp.where(inside[..., None], out, jnp.asarray(fill, img.dtype))


def _fix_jnp(m) -> jax.Array:
  a, b, c, d, e, f = (jnp.asarray(v, jnp.float32) for v in m)
  fix = lambda v: jnp.floor(v * 65536.0 + 0.5).astype(jnp.int32)
  return jnp.stack([fix(a), fix(b), fix(c + a * 0.5 + b * 0.5),
                    fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)])


# ----------------------------------------------------------------------------------
# Public single-image ops: fn(image [H, W, 3] float32, magnitude) -> image.

def identity(img, _=None):
  """Returns the image unchanged."""
  return img


def auto_contrast(img, _=None):
  """``ImageOps.autocontrast``: stretch each channel's [min, max] to [0, 255]."""
  return apply_lut(img, autocontrast_lut(histogram(img)))


def equalize(img, _=None):
  """``ImageOps.equalize``: per-channel histogram equalisation."""
  return apply_lut(img, equalize_lut(histogram(img)))


def posterize(img, bits):
  """``ImageOps.posterize(img, bits)``; bits 8 is the identity."""
  return apply_lut(img, posterize_lut(bits, img.shape[-1]))


def solarize(img, threshold):
  """``ImageOps.solarize(img, threshold)``: invert values >= threshold; 256 is the identity."""
  return apply_lut(img, solarize_lut(threshold, img.shape[-1]))


def brightness(img, factor):
  """``ImageEnhance.Brightness(img).enhance(factor)``; blend with black; 1 is the identity."""
  return blend(img, jnp.zeros((), jnp.float32), factor)


def color(img, factor):
  """``ImageEnhance.Color(img).enhance(factor)``: blend with the gray (luma) image."""
  return blend(img, luma(img)[..., None], factor)


def contrast(img, factor):
  """``ImageEnhance.Contrast(img).enhance(factor)``: blend with the mean luma (rounded)."""
  return blend(img, _mean_luma(luma(img)), factor)


def sharpness(img, factor):
  """``ImageEnhance.Sharpness(img).enhance(factor)``: blend with ``smooth(img)``."""
  return blend(img, smooth(img), factor)


def rotate(img, degrees):
  """``img.rotate(degrees)`` (counter-clockwise, about the centre, nearest, fill 0).

  Pillow special-cases multiples of 90 degrees with transposes; the fixed-point path
  used here gives the same pixels for 0 and 180 (and needs none of them for RA's ±27).
  """
  h, w = img.shape[:2]
  angle = -jnp.deg2rad(jnp.mod(jnp.asarray(degrees, jnp.float32), 360.0))
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = w / 2, h / 2
  m = (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)
  return affine_fixed(img, _fix_jnp(m))


def shear_x(img, shear):
  """``img.transform(size, AFFINE, (1, shear, 0, 0, 1, 0))`` (nearest, fill 0)."""
  return affine_fixed(img, _fix_jnp((1.0, shear, 0.0, 0.0, 1.0, 0.0)))


def shear_y(img, shear):
  """``img.transform(size, AFFINE, (1, 0, 0, shear, 1, 0))`` (nearest, fill 0)."""
  return affine_fixed(img, _fix_jnp((1.0, 0.0, 0.0, shear, 1.0, 0.0)))


def translate_x(img, pixels):
  """``img.transform(size, AFFINE, (1, 0, pixels, 0, 1, 0))``: content moves left by
  ``pixels`` (integer in the reference), fill 0."""
  return affine_fixed(img, _fix_jnp((1.0, 0.0, pixels, 0.0, 1.0, 0.0)))


def translate_y(img, pixels):
  """``img.transform(size, AFFINE, (1, 0, 0, 0, 1, pixels))``: content moves up, fill 0."""
  return affine_fixed(img, _fix_jnp((1.0, 0.0, 0.0, 0.0, 1.0, pixels)))


def cutout(img, cx, cy, size, fill: float = CUTOUT_FILL):
  """kekmodel's ``CutoutAbs(img, size)`` from a given centre ``(cx, cy)`` (floats in
  ``[0, W) x [0, H)``): ``x0 = int(max(0, cx - size/2))``, ``x1 = int(min(W, x0 + size))``
  (same for y); the rectangle ``[x0, x1] x [y0, y1]`` *inclusive* (PIL ImageDraw) is
  set to ``fill``. Image ``[H, W, C]`` -> ``[H, W, C]``."""
  h, w = img.shape[:2]
  size = jnp.asarray(size, jnp.float32)
  x0 = jnp.floor(jnp.maximum(0.0, cx - size / 2.0)).astype(jnp.int32)
  y0 = jnp.floor(jnp.maximum(0.0, cy - size / 2.0)).astype(jnp.int32)
  x1 = jnp.floor(jnp.minimum(float(w), x0 + size)).astype(jnp.int32)
  y1 = jnp.floor(jnp.minimum(float(h), y0 + size)).astype(jnp.int32)
  ys = jnp.arange(h)[:, None]
  xs = jnp.arange(w)[None, :]
  box = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
  return jnp.where(box[..., None], jnp.asarray(fill, img.dtype), img)


OPS: dict[str, Callable[[jax.Array, object], jax.Array]] = {
    "AutoContrast": auto_contrast,
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Equalize": equalize,
    "Identity": identity,
    "Posterize": posterize,
    "Rotate": rotate,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "Solarize": solarize,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
}
"""Name -> ``fn(image [H, W, 3] float32, magnitude) -> image``; the magnitude is the op's
natural argument (see :func:`level_to_arg`) and is ignored by AutoContrast, Equalize and
Identity."""
