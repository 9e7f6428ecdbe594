"""The per-image random draws of FixMatch's views, and the per-image views.

:func:`sample_weak_params` / :func:`sample_strong_params` draw each image's parameters
(:class:`WeakParams`: flip and crop; :class:`StrongParams`: those, the 2 RandAugment ops
with their levels, whether each is applied and its sign, and the Cutout square), all
from one key split per image. ``_weak_one`` / ``_strong_one`` turn one image and its
draws into its view; :mod:`dlpl_jax.augment.views` vmaps them over the batch.

How it runs fast under vmap: ``lax.switch`` on a per-image op index becomes a select of
all 14 branches under vmap. Instead each of the 2 op slots is three stages, each one
cheap and shared by several ops, with identity parameters when its ops are not drawn:

  1. a per-channel 256-entry LUT (AutoContrast, Equalize, Posterize, Solarize), built
     from one histogram and applied with one gather;
  2. ``floor(deg + f * (x - deg))`` (Brightness: deg = 0, Color: deg = luma, Contrast:
     deg = mean luma, Sharpness: deg = SMOOTH(x)), elementwise;
  3. a 16.16 fixed-point affine warp (Rotate, ShearX/Y, TranslateX/Y), one gather,
     with the fixed-point matrices tabulated per (op, level, sign) in float64 numpy.

Measured on 1-2 cores of an AMD EPYC (benchmarks/augment_throughput.py, batch 448):
strong ~15k images/s, about 2x the Pillow reference per image on one core; weak ~0.5M
images/s. Other CPU-specific choices are commented where made (a flat scatter for the
batched histogram, a one-hot dot to pick the LUT so that XLA does not recompute it per
pixel inside the gather, exact float floor-division, a clamp that prevents FMA).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlpl_jax.augment.ops import _autocontrast_lut
from dlpl_jax.augment.ops import _cumulative
from dlpl_jax.augment.ops import _equalize_lut
from dlpl_jax.augment.ops import _mean_luma
from dlpl_jax.augment.ops import affine_fixed
from dlpl_jax.augment.ops import apply_lut
from dlpl_jax.augment.ops import blend
from dlpl_jax.augment.ops import cutout
from dlpl_jax.augment.ops import histogram
from dlpl_jax.augment.ops import luma
from dlpl_jax.augment.ops import posterize_lut
from dlpl_jax.augment.ops import smooth
from dlpl_jax.augment.ops import solarize_lut
from dlpl_jax.augment.pillow import _tables
from dlpl_jax.augment.pillow import AUTO_CONTRAST
from dlpl_jax.augment.pillow import BRIGHTNESS
from dlpl_jax.augment.pillow import COLOR
from dlpl_jax.augment.pillow import CONTRAST
from dlpl_jax.augment.pillow import CUTOUT_FRACTION
from dlpl_jax.augment.pillow import EQUALIZE
from dlpl_jax.augment.pillow import IDENTITY
from dlpl_jax.augment.pillow import MAX_LEVEL
from dlpl_jax.augment.pillow import N_OPS_PER_IMAGE
from dlpl_jax.augment.pillow import NUM_OPS
from dlpl_jax.augment.pillow import OP_PROB
from dlpl_jax.augment.pillow import PAD_FRACTION
from dlpl_jax.augment.pillow import POSTERIZE
from dlpl_jax.augment.pillow import SHARPNESS
from dlpl_jax.augment.pillow import SOLARIZE

# ----------------------------------------------------------------------------------
# Random parameters (per image).

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


# ----------------------------------------------------------------------------------
# Per-image views: one image and its draws -> its view (vmapped in views.py).

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
