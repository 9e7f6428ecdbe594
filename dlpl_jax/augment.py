"""FixMatch's weak and strong views as pure, jit-compiled JAX functions.

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

Reference followed (exactly, op by op): kekmodel/FixMatch-pytorch,
``dataset/cifar.py`` ``TransformFixMatch`` and ``dataset/randaugment.py``
``RandAugmentMC(n=2, m=10)`` with ``fixmatch_augment_pool()``, i.e. the
RandAugment variant of the FixMatch paper as commonly reproduced in PyTorch:

* weak   = RandomHorizontalFlip(p=0.5), then RandomCrop(32, padding=int(32*0.125)=4,
  padding_mode='reflect') -- a translation by -4..4 px in x and y with reflect padding.
* strong = the same flip + crop, then RandAugmentMC, then CutoutAbs(16):

  - 2 ops drawn uniformly with replacement from the 14 ops below;
  - for each: level ``v ~ randint(1, 10)`` (1..9), and the op is applied with
    probability 0.5;
  - magnitudes (``_float(v, m) = v*m/10``, ``_int(v, m) = int(v*m/10)``):

    ================  ===========================================  =================
    op                argument                                     range
    ================  ===========================================  =================
    AutoContrast      --                                           --
    Brightness        factor ``_float(v, 0.9) + 0.05``             0.14 .. 0.86
    Color             factor ``_float(v, 0.9) + 0.05``             0.14 .. 0.86
    Contrast          factor ``_float(v, 0.9) + 0.05``             0.14 .. 0.86
    Equalize          --                                           --
    Identity          --                                           --
    Posterize         bits ``_int(v, 4) + 4``                      4 .. 7
    Rotate            degrees ``±_int(v, 30)``                     ±3 .. ±27
    Sharpness         factor ``_float(v, 0.9) + 0.05``             0.14 .. 0.86
    ShearX / ShearY   ``±_float(v, 0.3)``                          ±0.03 .. ±0.27
    Solarize          threshold ``256 - _int(v, 256)``             26 .. 231
    TranslateX / Y    pixels ``int(±_float(v, 0.3) * side)``       0 .. ±8 (32 px)
    ================  ===========================================  =================

    (the sign is a fair coin; the enhance factors are always < 1 in this reference);
  - Cutout: a square whose side is drawn uniformly in 1..16 = ``int(32 * 0.5)`` ("up
    to half the side", the FixMatch paper's RA Cutout range; kekmodel always uses 16,
    its maximum), centred at a point drawn uniformly in the image, drawn as kekmodel's
    ``CutoutAbs``: PIL's ``ImageDraw.rectangle`` includes both corners, so a side-s
    square covers (s+1)x(s+1) pixels where it is not clipped by the border; gray 127.

  Geometric ops use PIL's defaults as the reference calls them: nearest-neighbour
  sampling and fill 0 (black) outside the image -- kekmodel passes no ``fillcolor``
  (the (128, 128, 128) fill is from other RandAugment ports, not this one). Rotation is
  about the image centre; shear and translation follow PIL's affine convention
  (output pixel (x, y) samples the input at ``(a x + b y + c, d x + e y + f)``, pixel
  centres at +0.5), so ``TranslateX`` by +t moves content *left* by t pixels.

Exactness: every op reproduces Pillow's integer arithmetic (16.16 fixed-point affine
nearest sampling, the 601-2 luma ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``, the
float32 blend and truncation of ``Image.blend``, the 3x3 SMOOTH filter with copied
border, ``ImageOps.equalize``'s integer LUT, ``autocontrast``'s double-precision LUT via
a small table of the entries where float64 rounding lands one below the exact value).
``strong`` with the parameters of :func:`sample_strong_params` equals Pillow applied
with the same parameters, pixel for pixel (``tests/test_augment.py`` checks it on real
CIFAR-10). The single-image op functions that take a float magnitude (``rotate``,
``shear_x``, ...) compute their fixed-point matrix in float32, which can move a sample
by one fixed-point unit relative to Pillow's double: a rare single-pixel difference.

How it runs fast under vmap: ``lax.switch`` on a per-image op index becomes a select of
all 14 branches under vmap. Instead each of the 2 op slots is three stages, each one
cheap and shared by several ops, with identity parameters when its ops are not drawn:

  1. a per-channel 256-entry LUT (AutoContrast, Equalize, Posterize, Solarize), built
     from one histogram and applied with one gather;
  2. ``floor(deg + f * (x - deg))`` (Brightness: deg = 0, Color: deg = luma, Contrast:
     deg = mean luma, Sharpness: deg = SMOOTH(x)), elementwise;
  3. a 16.16 fixed-point affine warp (Rotate, ShearX/Y, TranslateX/Y), one gather,
     with the fixed-point matrices tabulated per (op, level, sign) in float64 numpy.

Measured on 1-2 cores of an AMD EPYC (experiments/augment_throughput.py, batch 448):
strong ~15k images/s, about 2x the Pillow reference per image on one core; weak ~0.5M
images/s. Other CPU-specific choices are commented where made (a flat scatter for the
batched histogram, a one-hot dot to pick the LUT so that XLA does not recompute it per
pixel inside the gather, exact float floor-division, a clamp that prevents FMA).

Shapes: "image" below means float32 ``[H, W, 3]`` holding integers in [0, 255];
"images" means ``[B, H, W, 3]``. Magnitude arguments are scalars (traced or not).

CLI: ``python -m dlpl_jax.augment --show [--out PATH] [--n 8] [--seed 0]`` writes a PNG
grid of real CIFAR-10 test images (rows: original, weak, 3 strong views), by default to
``runs/augment_views.png`` (not committed). The README's figure is regenerated only on
request: ``--show --out experiments/results/augment_views.png``.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlpl_jax import errors
from dlpl_jax.errors import UsageError

# ----------------------------------------------------------------------------------
# Constants of the reference (kekmodel/FixMatch-pytorch).

OP_NAMES = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity",
    "Posterize", "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize",
    "TranslateX", "TranslateY",
)  # fixmatch_augment_pool() order
(AUTO_CONTRAST, BRIGHTNESS, COLOR, CONTRAST, EQUALIZE, IDENTITY, POSTERIZE, ROTATE,
 SHARPNESS, SHEAR_X, SHEAR_Y, SOLARIZE, TRANSLATE_X, TRANSLATE_Y) = range(14)
NUM_OPS = len(OP_NAMES)

N_OPS_PER_IMAGE = 2    # RandAugmentMC(n=2, ...)
MAX_LEVEL = 10         # RandAugmentMC(..., m=10): level v ~ randint(1, 10), i.e. 1..9
PARAMETER_MAX = 10
OP_PROB = 0.5          # each drawn op is applied with probability 0.5
PAD_FRACTION = 0.125   # weak: RandomCrop(32, padding=int(32 * 0.125), 'reflect')
CUTOUT_FRACTION = 0.5  # Cutout side drawn in 1..int(32 * 0.5) (kekmodel: always 16)
CUTOUT_FILL = 127.0
AFFINE_FILL = 0.0      # PIL's transform/rotate default (no fillcolor in the reference)

_ENHANCE_OPS = (BRIGHTNESS, COLOR, CONTRAST, SHARPNESS)


def _float_parameter(v, max_v) -> float:
  return float(v) * max_v / PARAMETER_MAX


def _int_parameter(v, max_v) -> int:
  return int(v * max_v / PARAMETER_MAX)


def level_to_arg(op: int | str, level: int, negate: bool = False,
                 size: tuple[int, int] = (32, 32)):
  """The reference's argument of ``op`` at integer ``level`` (Python, exact).

  Args:
    op: index into :data:`OP_NAMES` or the name.
    level: ``v`` in 1..9 (0 is allowed and gives the weakest magnitude).
    negate: the reference's random sign (Rotate, Shear*, Translate* only).
    size: image ``(height, width)``; TranslateX uses the width, TranslateY the height.

  Returns:
    enhance factor (float), posterize bits (int), degrees (int), shear (float),
    solarize threshold (int), translation in pixels (int), or None for ops without
    a magnitude.
  """
  op = OP_NAMES.index(op) if isinstance(op, str) else int(op)
  sign = -1 if negate else 1
  if op in _ENHANCE_OPS:
    return _float_parameter(level, 0.9) + 0.05
  if op == POSTERIZE:
    return _int_parameter(level, 4) + 4
  if op == ROTATE:
    return sign * _int_parameter(level, 30)
  if op in (SHEAR_X, SHEAR_Y):
    return sign * _float_parameter(level, 0.3)
  if op == SOLARIZE:
    return 256 - _int_parameter(level, 256)
  if op in (TRANSLATE_X, TRANSLATE_Y):
    v = sign * _float_parameter(level, 0.3)
    return int(v * (size[1] if op == TRANSLATE_X else size[0]))
  return None


# ----------------------------------------------------------------------------------
# Affine matrices (PIL's AFFINE data: output (x, y) samples input (a x + b y + c,
# d x + e y + f)) and their 16.16 fixed-point form as Pillow's affine_fixed uses it.

def _rotate_matrix_py(degrees: float, height: int, width: int) -> tuple[float, ...]:
  """Pillow's Image.rotate matrix (expand=False, centre (w/2, h/2)), in float64."""
  angle = -math.radians(degrees % 360.0)
  a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
  d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
  cx, cy = width / 2, height / 2
  c = a * -cx + b * -cy + 0.0 + cx
  f = d * -cx + e * -cy + 0.0 + cy
  return (a, b, c, d, e, f)


def _matrix_py(op: int, arg, height: int, width: int) -> tuple[float, ...]:
  if op == ROTATE:
    return _rotate_matrix_py(arg, height, width)
  if op == SHEAR_X:
    return (1.0, arg, 0.0, 0.0, 1.0, 0.0)
  if op == SHEAR_Y:
    return (1.0, 0.0, 0.0, arg, 1.0, 0.0)
  if op == TRANSLATE_X:
    return (1.0, 0.0, float(arg), 0.0, 1.0, 0.0)
  if op == TRANSLATE_Y:
    return (1.0, 0.0, 0.0, 0.0, 1.0, float(arg))
  return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _fix_py(m) -> list[int]:
  """Pillow's FIX(v) = floor(v * 65536 + 0.5) of (a, b, c + a/2 + b/2, d, e, f + d/2 + e/2)."""
  fix = lambda v: math.floor(v * 65536.0 + 0.5)
  a, b, c, d, e, f = m
  return [fix(a), fix(b), fix(c + a * 0.5 + b * 0.5),
          fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)]


class _Tables(NamedTuple):
  affine_fix: np.ndarray  # int32 [NUM_OPS, MAX_LEVEL, 2 (negate), 6]
  factor: np.ndarray      # float32 [NUM_OPS, MAX_LEVEL]; 1.0 for non-enhance ops
  bits: np.ndarray        # int32 [MAX_LEVEL]
  threshold: np.ndarray   # int32 [MAX_LEVEL]


@functools.lru_cache(maxsize=None)
def _tables(height: int, width: int) -> _Tables:
  """Per-(op, level, sign) arguments, computed in float64 like the reference."""
  affine = np.zeros((NUM_OPS, MAX_LEVEL, 2, 6), np.int64)
  factor = np.ones((NUM_OPS, MAX_LEVEL), np.float32)
  bits = np.full((MAX_LEVEL,), 8, np.int32)
  thr = np.full((MAX_LEVEL,), 256, np.int32)
  for op in range(NUM_OPS):
    for v in range(MAX_LEVEL):
      for neg in (0, 1):
        arg = level_to_arg(op, v, bool(neg), (height, width))
        affine[op, v, neg] = _fix_py(_matrix_py(op, arg, height, width))
      if op in _ENHANCE_OPS:
        factor[op, v] = np.float32(level_to_arg(op, v))
  for v in range(MAX_LEVEL):
    bits[v] = level_to_arg(POSTERIZE, v)
    thr[v] = level_to_arg(SOLARIZE, v)
  assert np.abs(affine).max() < 2**31
  return _Tables(affine.astype(np.int32), factor, bits, thr)


@functools.lru_cache(maxsize=None)
def _autocontrast_fixes() -> tuple[np.ndarray, np.ndarray]:
  """Where Pillow's autocontrast LUT is one below the exact ``(255 (i - lo)) // (hi - lo)``.

  Pillow evaluates ``int(i * scale + offset)`` in float64, which falls just under an
  exact integer for ~12k of the ~2.8M (lo, hi, i) entries (at most 17 per (lo, hi)).
  Returns CSR form: ``offsets`` int32 ``[256 * 256 + 1]`` indexed by ``lo * 256 + hi``
  and the entries ``i`` int32 ``[~12k]``.
  """
  pairs, values = [], []
  for d in range(1, 256):
    lo = np.arange(0, 256 - d, dtype=np.int64)[:, None]
    k = np.arange(0, d + 1, dtype=np.int64)[None, :]
    scale = 255.0 / d
    pil = np.floor((lo + k) * scale + (-lo * scale)).astype(np.int64)
    lo_b, k_b = np.nonzero(pil != (255 * k) // d)
    pairs.append(lo[lo_b, 0] * 256 + lo[lo_b, 0] + d)
    values.append(lo[lo_b, 0] + k_b)
  pairs, values = np.concatenate(pairs), np.concatenate(values)
  order = np.lexsort((values, pairs))
  counts = np.bincount(pairs, minlength=256 * 256)
  assert counts.max() <= _AUTOCONTRAST_MAX_FIXES
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
  return offsets, values[order].astype(np.int32)


_AUTOCONTRAST_MAX_FIXES = 17


# ----------------------------------------------------------------------------------
# Single-image primitives. image: float32 [H, W, 3], integer values in [0, 255].

def _to_image(images) -> jax.Array:
  """float32, rounded to integers and clipped to [0, 255] (uint8 semantics)."""
  x = jnp.asarray(images)
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.clip(x, 0, 255).astype(jnp.float32)
  return jnp.clip(jnp.round(x.astype(jnp.float32)), 0.0, 255.0)


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


# ----------------------------------------------------------------------------------
# Random parameters (per image) and the batched, vmapped views.

class WeakParams(NamedTuple):
  """Per-image weak-view draws (leading batch axis ``[B]`` on each field)."""
  flip: jax.Array  # bool: horizontal flip (applied first)
  dy: jax.Array    # int32 in [0, 2 * pad]: crop offset into the reflect-padded image
  dx: jax.Array    # int32 in [0, 2 * pad]


class StrongParams(NamedTuple):
  """Per-image strong-view draws (leading batch axis ``[B]``)."""
  weak: WeakParams
  ops: jax.Array      # int32 [B, 2]: indices into OP_NAMES
  levels: jax.Array   # int32 [B, 2]: v in 1..9
  apply: jax.Array    # bool [B, 2]: the reference's "random.random() < 0.5"
  negate: jax.Array   # bool [B, 2]: random sign of Rotate/Shear*/Translate*
  cut_cx: jax.Array   # float32 [B]: Cutout centre, uniform in [0, W)
  cut_cy: jax.Array   # float32 [B]: uniform in [0, H)
  cut_size: jax.Array # int32 [B]: Cutout side, uniform in 1..side//2 (FixMatch RA)


def _cutout_max(height: int, width: int) -> int:
  return int(min(height, width) * CUTOUT_FRACTION)


def _pads(height: int, width: int) -> tuple[int, int]:
  return int(height * PAD_FRACTION), int(width * PAD_FRACTION)


def _sample_weak_one(key, height: int, width: int) -> WeakParams:
  kf, ky, kx = jax.random.split(key, 3)
  py, px = _pads(height, width)
  return WeakParams(
      flip=jax.random.bernoulli(kf, 0.5),
      dy=jax.random.randint(ky, (), 0, 2 * py + 1, jnp.int32),
      dx=jax.random.randint(kx, (), 0, 2 * px + 1, jnp.int32))


def _sample_strong_one(key, height: int, width: int) -> StrongParams:
  kw, ko, kl, ka, kn, kc, ks = jax.random.split(key, 7)
  n = N_OPS_PER_IMAGE
  cut = jax.random.uniform(kc, (2,), jnp.float32) * jnp.array([width, height], jnp.float32)
  return StrongParams(
      weak=_sample_weak_one(kw, height, width),
      ops=jax.random.randint(ko, (n,), 0, NUM_OPS, jnp.int32),
      levels=jax.random.randint(kl, (n,), 1, MAX_LEVEL, jnp.int32),
      apply=jax.random.bernoulli(ka, OP_PROB, (n,)),
      negate=jax.random.bernoulli(kn, 0.5, (n,)),
      cut_cx=jnp.minimum(cut[0], np.nextafter(np.float32(width), 0)),
      cut_cy=jnp.minimum(cut[1], np.nextafter(np.float32(height), 0)),
      cut_size=jax.random.randint(ks, (), 1, _cutout_max(height, width) + 1, jnp.int32))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def sample_weak_params(key, batch: int, height: int = 32, width: int = 32) -> WeakParams:
  """Independent weak-view draws for ``batch`` images (``key`` split into ``batch`` keys)."""
  keys = jax.random.split(key, batch)
  return jax.vmap(lambda k: _sample_weak_one(k, height, width))(keys)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def sample_strong_params(key, batch: int, height: int = 32, width: int = 32) -> StrongParams:
  """Independent strong-view draws for ``batch`` images."""
  keys = jax.random.split(key, batch)
  return jax.vmap(lambda k: _sample_strong_one(k, height, width))(keys)


def _reflect(i, n: int):
  i = jnp.abs(i)
  return jnp.where(i > n - 1, 2 * (n - 1) - i, i)


def _weak_one(img: jax.Array, p: WeakParams) -> jax.Array:
  """Flip, then crop from the reflect-padded image, as one gather. ``[H, W, C]``."""
  h, w, c = img.shape
  py, px = _pads(h, w)
  rows = _reflect(jnp.arange(h, dtype=jnp.int32) + p.dy - py, h)
  cols = _reflect(jnp.arange(w, dtype=jnp.int32) + p.dx - px, w)
  cols = jnp.where(p.flip, w - 1 - cols, cols)
  idx = rows[:, None] * w + cols[None, :]
  return jnp.take(img.reshape(h * w, c), idx, axis=0, mode="clip")


def _ra_slot(img: jax.Array, op, level, negate) -> jax.Array:
  """One RandAugment op on an image, as LUT -> blend -> affine stages (see module doc)."""
  h, w, c = img.shape
  t = _tables(h, w)
  # 1. LUT stage. The op's LUT is picked with a one-hot dot rather than a select: XLA
  # does not fuse a dot into the gather that applies the LUT, whereas a select chain
  # would be fused and the LUT (autocontrast fixes, equalize) recomputed per pixel.
  hist = histogram(img)
  cum, n, lo, hi = _cumulative(hist)
  ident = jnp.broadcast_to(jnp.arange(256, dtype=jnp.int32), (c, 256))
  cands = jnp.stack([
      ident, _autocontrast_lut(lo, hi), _equalize_lut(hist, cum, n, lo, hi),
      posterize_lut(jnp.asarray(t.bits)[level], c),
      solarize_lut(jnp.asarray(t.threshold)[level], c)]).astype(jnp.float32)
  pick = jnp.asarray(_LUT_SLOT)[op] == jnp.arange(cands.shape[0])
  lut = jnp.einsum("k,kcv->cv", pick.astype(jnp.float32), cands,
                   precision=jax.lax.Precision.HIGHEST)
  x = apply_lut(img, lut)
  # 2. Blend stage: degenerate image per enhance op; x itself otherwise (identity).
  l = luma(x)
  deg = jnp.where(op == BRIGHTNESS, 0.0,
                  jnp.where(op == COLOR, l[..., None],
                            jnp.where(op == CONTRAST, _mean_luma(l),
                                      jnp.where(op == SHARPNESS, smooth(x), x))))
  x = blend(x, deg, jnp.asarray(t.factor)[op, level])
  # 3. Affine stage.
  fix = jnp.asarray(t.affine_fix)[op, level, negate.astype(jnp.int32)]
  return affine_fixed(x, fix)


# Which LUT of the LUT stage each op uses (0: identity).
_LUT_SLOT = np.zeros((NUM_OPS,), np.int32)
_LUT_SLOT[[AUTO_CONTRAST, EQUALIZE, POSTERIZE, SOLARIZE]] = [1, 2, 3, 4]


def _strong_one(img: jax.Array, p: StrongParams) -> jax.Array:
  """Weak view, then the 2 RandAugment slots (op -> Identity where not applied), then
  Cutout; image ``[H, W, 3]`` -> ``[H, W, 3]``."""
  h, w, _ = img.shape
  x = _weak_one(img, p.weak)
  for s in range(N_OPS_PER_IMAGE):
    op = jnp.where(p.apply[s], p.ops[s], IDENTITY)
    x = _ra_slot(x, op, p.levels[s], p.negate[s])
  return cutout(x, p.cut_cx, p.cut_cy, p.cut_size)


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


# ----------------------------------------------------------------------------------
# Visual check.

def show(images, key, out_path, n_strong: int = 3) -> pathlib.Path:
  """Writes a PNG grid: rows = original, weak view, ``n_strong`` strong views.

  Args:
    images: ``[N, H, W, 3]`` uint8 (or float in [0, 255]).
    key: JAX PRNG key.
    out_path: PNG path (parent folders are created).
    n_strong: number of strong-view rows.

  Returns:
    The path written.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  images = np.asarray(images)
  n = images.shape[0]
  keys = jax.random.split(key, 1 + n_strong)
  rows = [("original", images.astype(np.float32)),
          ("weak", np.asarray(weak(keys[0], images)))]
  rows += [(f"strong #{i + 1}", np.asarray(strong(keys[1 + i], images)))
           for i in range(n_strong)]
  fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.9, 1.3 * len(rows)),
                           squeeze=False)
  for r, (label, views) in enumerate(rows):
    for i in range(n):
      ax = axes[r][i]
      ax.imshow(np.clip(views[i], 0, 255).astype(np.uint8), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(label, fontsize=9)
  fig.suptitle("FixMatch views (dlpl_jax.augment): weak = flip + reflect-pad crop; "
               "strong = weak + RandAugment(2) + Cutout", fontsize=8)
  fig.tight_layout()
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


MAX_SHOW = 64  # columns of the --show grid


def _load_cifar_test(n: int, data_dir: str | None) -> np.ndarray:
  if data_dir is None:
    raise UsageError("set TFDS_DATA_DIR (or --data_dir) to the prepared CIFAR-10")
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if not tfds.builder("cifar10", data_dir=data_dir).is_prepared():
    raise UsageError(f"cifar10 is not prepared under {data_dir} (set TFDS_DATA_DIR or "
                     "--data_dir to the folder that holds cifar10/)")
  ds = tfds.load("cifar10", split=f"test[:{n}]", batch_size=-1, download=False,
                 data_dir=data_dir)
  return tfds.as_numpy(ds)["image"]


def main(argv=None) -> None:
  parser = errors.ArgumentParser(prog="python -m dlpl_jax.augment",
                                 description=__doc__.split("\n")[0])
  parser.add_argument("--show", action="store_true",
                      help="write a PNG grid of weak/strong views of CIFAR-10 test images")
  parser.add_argument("--out", default="runs/augment_views.png",
                      help="PNG path (default runs/augment_views.png, not committed; the "
                           "README's figure: --out experiments/results/augment_views.png)")
  parser.add_argument("--n", type=int, default=8,
                      help=f"number of images (columns), 1 to {MAX_SHOW}")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: $TFDS_DATA_DIR or ../shared/...)")
  args = parser.parse_args(argv)
  if not args.show:
    parser.print_help()
    return
  if not 1 <= args.n <= MAX_SHOW:
    parser.error(f"--n must be in [1, {MAX_SHOW}], got {args.n}")
  if pathlib.Path(args.out).suffix.lower() != ".png":
    parser.error(f"--out must be a .png path, got {args.out!r}")
  data_dir = args.data_dir or os.environ.get("TFDS_DATA_DIR")
  if data_dir is None:
    shared = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tensorflow_datasets"
    data_dir = str(shared) if shared.is_dir() else None

  def command():
    errors.check_output(args.out)
    images = _load_cifar_test(args.n, data_dir)
    print(f"wrote {show(images, jax.random.key(args.seed), args.out)}")

  status = errors.run_command(command, paths=(args.out,))
  if status:
    sys.exit(status)


if __name__ == "__main__":
  main()
