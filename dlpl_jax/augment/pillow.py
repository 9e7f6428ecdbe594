"""The reference's constants and Pillow's exact arithmetic, as Python / numpy tables.

Everything here is plain Python or float64 numpy, computed once (``lru_cache``) and
handed to the JAX code of :mod:`dlpl_jax.augment.ops` and
:mod:`dlpl_jax.augment.randaugment` as constants: the op names and indices, the
magnitudes of :func:`level_to_arg`, the 16.16 fixed-point affine matrices per (op,
level, sign), and the entries where Pillow's float64 autocontrast LUT is one below the
exact integer.

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
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

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

  >>> level_to_arg("Rotate", 9, negate=True), level_to_arg("Posterize", 1)
  (-27, 4)
  >>> level_to_arg("TranslateX", 9), level_to_arg("Solarize", 9), level_to_arg("Equalize", 5)
  (8, 26, None)
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
