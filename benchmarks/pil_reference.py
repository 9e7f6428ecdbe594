"""Pillow reference for ``dlpl_jax.augment`` (shared by the tests and the benchmark).

A re-implementation, op for op, of the CPU augmentation of kekmodel/FixMatch-pytorch
(``dataset/randaugment.py``: ``fixmatch_augment_pool``, ``RandAugmentMC(n=2, m=10)``,
``CutoutAbs``; ``dataset/cifar.py``: the weak flip + reflect-padded crop), written
against Pillow only (no torch / torchvision):

* ``OPS[name](pil_img, arg)``: each op with its natural argument (degrees, factor, ...).
* ``level_to_arg(name, v, negate, size)``: the reference's level -> argument map.
* ``weak_view(img, flip, dy, dx)`` / ``strong_view(img, ...)``: deterministic views for
  given random draws (the same draws as ``dlpl_jax.augment.StrongParams``), so that the
  JAX and PIL results can be compared pixel by pixel.
* ``RandomWeak`` / ``RandomStrong``: the per-image random pipelines as a PyTorch data
  loader would run them (Python ``random`` / numpy), for the throughput benchmark.

Images are uint8 numpy arrays ``[H, W, 3]`` at the boundaries, PIL images inside.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

OP_NAMES = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity",
    "Posterize", "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize",
    "TranslateX", "TranslateY",
)
PARAMETER_MAX = 10


def _affine(img, data):
  return img.transform(img.size, Image.Transform.AFFINE, data)


OPS = {
    "AutoContrast": lambda img, _=None: ImageOps.autocontrast(img),
    "Brightness": lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    "Color": lambda img, f: ImageEnhance.Color(img).enhance(f),
    "Contrast": lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    "Equalize": lambda img, _=None: ImageOps.equalize(img),
    "Identity": lambda img, _=None: img,
    "Posterize": lambda img, bits: ImageOps.posterize(img, int(bits)),
    "Rotate": lambda img, deg: img.rotate(deg),
    "Sharpness": lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
    "ShearX": lambda img, s: _affine(img, (1, s, 0, 0, 1, 0)),
    "ShearY": lambda img, s: _affine(img, (1, 0, 0, s, 1, 0)),
    "Solarize": lambda img, th: ImageOps.solarize(img, int(th)),
    "TranslateX": lambda img, t: _affine(img, (1, 0, t, 0, 1, 0)),
    "TranslateY": lambda img, t: _affine(img, (1, 0, 0, 0, 1, t)),
}

# (max_v, bias) of fixmatch_augment_pool(); None for ops without a magnitude.
POOL = {
    "AutoContrast": None, "Brightness": (0.9, 0.05), "Color": (0.9, 0.05),
    "Contrast": (0.9, 0.05), "Equalize": None, "Identity": None, "Posterize": (4, 4),
    "Rotate": (30, 0), "Sharpness": (0.9, 0.05), "ShearX": (0.3, 0), "ShearY": (0.3, 0),
    "Solarize": (256, 0), "TranslateX": (0.3, 0), "TranslateY": (0.3, 0),
}
_FLOAT_OPS = ("Brightness", "Color", "Contrast", "Sharpness", "ShearX", "ShearY",
              "TranslateX", "TranslateY")
_SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def level_to_arg(name: str, v: int, negate: bool = False, size=(32, 32)):
  """kekmodel's argument for op ``name`` at level ``v`` (``size`` = (height, width))."""
  if POOL[name] is None:
    return None
  max_v, bias = POOL[name]
  if name in _FLOAT_OPS:
    arg = float(v) * max_v / PARAMETER_MAX + bias
  else:
    arg = int(v * max_v / PARAMETER_MAX) + bias
  if name in _SIGNED_OPS and negate:
    arg = -arg
  if name == "TranslateX":
    arg = int(arg * size[1])
  elif name == "TranslateY":
    arg = int(arg * size[0])
  elif name == "Solarize":
    arg = 256 - arg
  return arg


def apply_op(img: Image.Image, name: str, v: int, negate: bool = False) -> Image.Image:
  """One op of the pool at level ``v`` (PIL in, PIL out)."""
  return OPS[name](img, level_to_arg(name, v, negate, (img.size[1], img.size[0])))


def cutout_abs(img: Image.Image, v: int, cx: float, cy: float) -> Image.Image:
  """kekmodel's CutoutAbs(img, v) with its uniform centre draws given as (cx, cy)."""
  w, h = img.size
  x0 = int(max(0, cx - v / 2.0))
  y0 = int(max(0, cy - v / 2.0))
  x1 = int(min(w, x0 + v))
  y1 = int(min(h, y0 + v))
  img = img.copy()
  ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (127, 127, 127))
  return img


def weak_view(img: np.ndarray, flip: bool, dy: int, dx: int) -> np.ndarray:
  """RandomHorizontalFlip, then RandomCrop(padding=H//8, reflect) at offset (dy, dx)."""
  h, w = img.shape[:2]
  if flip:
    img = np.asarray(ImageOps.mirror(Image.fromarray(img)))
  py, px = int(h * 0.125), int(w * 0.125)
  padded = np.pad(img, ((py, py), (px, px), (0, 0)), mode="reflect")
  return padded[dy:dy + h, dx:dx + w]


def strong_view(img: np.ndarray, flip, dy, dx, ops, levels, apply, negate, cx, cy,
                cut_size=None, cutout: bool = True) -> np.ndarray:
  """Weak view, then the RandAugmentMC ops (skipping those with apply=False), then
  CutoutAbs(side // 2), for given draws (the fields of ``augment.StrongParams``)."""
  x = Image.fromarray(weak_view(img, bool(flip), int(dy), int(dx)))
  for op, v, a, neg in zip(ops, levels, apply, negate):
    if a:
      x = apply_op(x, OP_NAMES[int(op)], int(v), bool(neg))
  if cutout:
    size = int(min(img.shape[:2]) * 0.5) if cut_size is None else int(cut_size)
    x = cutout_abs(x, size, float(cx), float(cy))
  return np.asarray(x)


class RandomWeak:
  """Per-image random weak view (Python/numpy RNG), uint8 [H, W, 3] -> uint8."""

  def __init__(self, seed: int = 0):
    self.rng = np.random.default_rng(seed)

  def __call__(self, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    py, px = int(h * 0.125), int(w * 0.125)
    return weak_view(img, self.rng.random() < 0.5, int(self.rng.integers(0, 2 * py + 1)),
                     int(self.rng.integers(0, 2 * px + 1)))


class RandomStrong:
  """Per-image random strong view like kekmodel's TransformFixMatch.strong:
  flip + crop, RandAugmentMC(n=2, m=10), Cutout of side 1..16. uint8 [H, W, 3] -> uint8."""

  def __init__(self, seed: int = 0, n: int = 2, m: int = 10):
    self.weak = RandomWeak(seed)
    self.random = random.Random(seed)
    self.n, self.m = n, m

  def __call__(self, img: np.ndarray) -> np.ndarray:
    x = Image.fromarray(self.weak(img))
    for name in self.random.choices(OP_NAMES, k=self.n):
      v = self.random.randint(1, self.m - 1)
      if self.random.random() < 0.5:
        x = apply_op(x, name, v, self.random.random() < 0.5)
    w, h = x.size
    x = cutout_abs(x, self.random.randint(1, int(min(w, h) * 0.5)), self.random.uniform(0, w),
                   self.random.uniform(0, h))
    return np.asarray(x)



def strong_views(images, p):
  """:func:`strong_view` of each image of ``images`` ``[B, H, W, 3]`` with the draws of a
  ``dlpl_jax.augment.StrongParams`` ``p`` (fields with a leading ``[B]`` axis)."""
  flip, dy, dx = (np.asarray(x) for x in p.weak)
  ops, levels, apply, negate, cx, cy, size = (np.asarray(x) for x in p[1:])
  return np.stack([
      strong_view(images[i], flip[i], dy[i], dx[i], ops[i], levels[i], apply[i],
                  negate[i], cx[i], cy[i], size[i])
      for i in range(len(images))])
