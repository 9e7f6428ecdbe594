"""A compact, lossless copy of a prepared image dataset that reads with NumPy alone.

:func:`write` codes the uint8 arrays of a dataset's splits into one ``.npz`` file that
:func:`read` turns back into the very same arrays and labels, with NumPy and the
standard library (``lzma``, ``hashlib``, ``json``): no TensorFlow, TFDS or Pillow.
``dlpl-compact-data --out data/cifar10_compact.npz`` (:mod:`dlpl_jax.tools.compact_data`)
writes it from the prepared TFDS CIFAR-10; ``--config.data_dir=data/cifar10_compact.npz``
makes the trainer read it (:func:`dlpl_jax.data.in_memory.load`), for hosts without
TensorFlow.

How it is small and exact. The copy of CIFAR-10 this project uses went through JPEG
(quality 75, 4:2:0; docs/DATA.md), so its pixels are close to a JPEG decode of a few
quantized DCT coefficients. Each image is coded as:

* ``coef``: JPEG-style coefficients — YCbCr, 2x2 chroma averaging, 8x8 DCT, rounded
  by the IJG quantization tables of ``quality`` — stored coefficient-major as int16
  and compressed with LZMA;
* ``residual``: ``(image - predict(coef)) mod 256`` as uint8, planar, LZMA-compressed,
  where :func:`predict` is a JPEG decoder in exact integer arithmetic (libjpeg's
  triangular chroma upsampling and fixed-point colour conversion), so the prediction is
  the same on every machine and the residual makes the decode exact;
* the SHA-256 of each split's original image bytes, checked by :func:`read`: a file
  that does not decode to those bytes raises :class:`CompactDataError`, never a silent
  wrong pixel.

On the JPEG-derived CIFAR-10 copy most residual values are 0, and the 60,000 images
take about half the size of a lossless PNG-style coding (docs/DATA.md gives the
measured sizes). On images that never went through JPEG the copy stays exact but the
residual carries most of the information, so the file is larger.

File layout (``np.savez``, no pickled objects): ``meta`` (UTF-8 JSON: format version,
dataset, quality, per split its shape and SHA-256), ``tables`` (int32 ``[2, 8, 8]``:
luma and chroma quantization tables) and per split ``{split}_labels`` (int32 ``[N]``),
``{split}_coef`` and ``{split}_residual`` (uint8 LZMA streams).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import time

import numpy as np

from dlpl_jax.data import npz
from dlpl_jax.errors import UsageError

FORMAT = "dlpl_jax.compact_data/1"
SPLITS = ("train", "test")
SUFFIX = ".npz"

# IJG base quantization tables (JPEG standard, Annex K), row-major 8x8.
_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99]
    + [99] * 32).reshape(8, 8)
# Orthonormal 8-point DCT-II matrix D[k, n] and its fixed-point copy (13 fraction bits).
_K = np.arange(8)
_DCT = np.sqrt(2 / 8) * np.cos(np.pi * (2 * _K[None, :] + 1) * _K[:, None] / 16)
_DCT[0] /= np.sqrt(2)
_DCT_BITS = 13
_DCT_INT = np.round(_DCT * (1 << _DCT_BITS))


class CompactDataError(UsageError):
  """A compact dataset file is missing, not one, damaged, or not what the run asked for."""


def is_compact(path) -> bool:
  """Whether ``path`` names a compact dataset file (by its ``.npz`` suffix)."""
  return bool(path) and os.fspath(path).endswith(SUFFIX)


def quant_tables(quality: int) -> np.ndarray:
  """IJG quantization tables for a JPEG quality.

  Args:
    quality: 1..100, as libjpeg's ``jpeg_set_quality``.

  Returns:
    int32 ``[2, 8, 8]``: luma, chroma; entries in ``[1, 255]``.

  >>> quant_tables(75)[0, 0, :4].tolist()
  [8, 6, 5, 8]
  """
  if not 1 <= quality <= 100:
    raise UsageError(f"quality must be in [1, 100], got {quality}")
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return np.stack([np.clip((t * scale + 50) // 100, 1, 255) for t in (_LUMA, _CHROMA)]
                  ).astype(np.int32)


def _check_images(images: np.ndarray) -> None:
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise UsageError(f"images must be uint8 [N, H, W, 3], got {images.dtype} "
                     f"{list(images.shape)}")
  if images.shape[1] % 16 or images.shape[2] % 16:
    raise UsageError(f"image height and width must be multiples of 16 (4:2:0 blocks), "
                     f"got {images.shape[1]}x{images.shape[2]}")


def _blocks(a: np.ndarray) -> np.ndarray:
  """``[N, H, W]`` -> ``[N, H/8, W/8, 8, 8]``."""
  n, h, w = a.shape
  return a.reshape(n, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)


def coefficients(images: np.ndarray, tables: np.ndarray) -> tuple[np.ndarray, ...]:
  """Quantized JPEG-style DCT coefficients of uint8 RGB images (the encoder's half).

  Args:
    images: uint8 ``[N, H, W, 3]``, H and W multiples of 16.
    tables: int ``[2, 8, 8]`` quantization tables (:func:`quant_tables`).

  Returns:
    ``(y, cb, cr)`` int16: ``[N, H/8, W/8, 8, 8]`` and twice ``[N, H/16, W/16, 8, 8]``.
  """
  x = images.astype(np.float64)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = 0.299 * r + 0.587 * g + 0.114 * b
  cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
  cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128

  def down(c):
    n, h, w = c.shape
    return c.reshape(n, h // 2, 2, w // 2, 2).mean((2, 4))

  def fdct(a, t):
    return np.rint(_DCT @ (_blocks(a) - 128) @ _DCT.T / t).astype(np.int16)

  return fdct(y, tables[0]), fdct(down(cb), tables[1]), fdct(down(cr), tables[1])


def _idct(q: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Dequantize and inverse-DCT ``[N, h, w, 8, 8]`` coefficients to int32 samples in
  [0, 255], ``[N, 8h, 8w]``, in exact integer arithmetic.

  The products are integers below 2^42, so float64 holds every partial sum exactly and
  the result does not depend on the BLAS or its summation order. Both 8x8 products run
  as one 2-D matrix product each (fast BLAS) on the blocks laid side by side.
  """
  n, bh, bw = q.shape[:3]
  f = (q.astype(np.float64) * table).reshape(-1, 8)  # rows: (block, u); columns: v
  g = (f @ _DCT_INT).reshape(-1, 8, 8)  # [block, u, x]
  s = (g.transpose(0, 2, 1).reshape(-1, 8) @ _DCT_INT).reshape(n, bh, bw, 8, 8)
  shift = 2 * _DCT_BITS  # s is [.., x, y] scaled by 2^shift
  # floor((s + offset) / 2^shift): exact in float64 (integers below 2^53, a power-of-two
  # scale), the same as the integer shift.
  s += float((128 << shift) + (1 << (shift - 1)))
  s *= 2.0 ** -shift
  v = np.clip(np.floor(s, out=s), 0, 255, out=s).astype(np.int32)
  return v.transpose(0, 1, 4, 2, 3).reshape(n, bh * 8, bw * 8)


def _upsample(c: np.ndarray) -> np.ndarray:
  """libjpeg's h2v2 "fancy" (triangular) chroma upsampling: int32 ``[N, h, w]`` ->
  ``[N, 2h, 2w]``, its integer rounding included."""
  n, h, w = c.shape
  col = np.empty((n, h, 2, w), np.int32)  # column sums of output rows 2i and 2i+1
  col[:, :, 0] = 3 * c
  col[:, :, 1] = col[:, :, 0]
  col[:, 0, 0] += c[:, 0]
  col[:, 1:, 0] += c[:, :-1]
  col[:, :-1, 1] += c[:, 1:]
  col[:, -1, 1] += c[:, -1]
  col = col.reshape(n, 2 * h, w)
  out = np.empty((n, 2 * h, w, 2), np.int32)
  out[..., 0] = 3 * col + 8
  out[..., 1] = 3 * col + 7
  out[:, :, 1:, 0] += col[:, :, :-1]
  out[:, :, :1, 0] += col[:, :, :1]
  out[:, :, :-1, 1] += col[:, :, 1:]
  out[:, :, -1:, 1] += col[:, :, -1:]
  out >>= 4
  return out.reshape(n, 2 * h, 2 * w)


def predict(y: np.ndarray, cb: np.ndarray, cr: np.ndarray,
            tables: np.ndarray) -> np.ndarray:
  """Decodes coefficients to RGB, the same on every machine (the decoder's half).

  Args:
    y, cb, cr: int16 coefficients as returned by :func:`coefficients`.
    tables: int ``[2, 8, 8]`` quantization tables.

  Returns:
    uint8 ``[N, H, W, 3]``: libjpeg's decode up to its integer IDCT's rounding.
  """
  luma = _idct(y, tables[0])
  xb = _upsample(_idct(cb, tables[1])) - 128
  xr = _upsample(_idct(cr, tables[1])) - 128
  bits, half = 16, 1 << 15

  def fix(v):
    return int(v * (1 << bits) + 0.5)

  out = np.empty(luma.shape + (3,), np.uint8)
  for ch, term in enumerate(((fix(1.402) * xr + half) >> bits,
                             (-fix(0.34414) * xb - fix(0.71414) * xr + half) >> bits,
                             (fix(1.772) * xb + half) >> bits)):
    term += luma
    np.clip(term, 0, 255, out=term)
    out[..., ch] = term
  return out


def _coef_shapes(n: int, h: int, w: int) -> list[tuple[int, ...]]:
  return [(n, h // 8, w // 8, 8, 8)] + [(n, h // 16, w // 16, 8, 8)] * 2


def encode(images: np.ndarray, tables: np.ndarray, preset: int = 9) -> dict[str, bytes]:
  """Codes uint8 ``[N, H, W, 3]`` images losslessly: ``{'coef': ..., 'residual': ...}``
  (LZMA streams; see the module docstring)."""
  _check_images(images)
  coefs = coefficients(images, tables)
  residual = (images - predict(*coefs, tables)).astype(np.uint8)  # mod 256
  # Coefficient-major: all images' coefficient (u, v) of block (i, j) together.
  coef_bytes = b"".join(np.ascontiguousarray(c.transpose(3, 4, 1, 2, 0)).tobytes()
                        for c in coefs)
  return {"coef": lzma.compress(coef_bytes, preset=preset),
          "residual": lzma.compress(np.ascontiguousarray(
              residual.transpose(3, 0, 1, 2)).tobytes(), preset=preset)}


def decode(coef: bytes, residual: bytes, shape, tables: np.ndarray) -> np.ndarray:
  """Inverse of :func:`encode`: uint8 ``shape`` = ``[N, H, W, 3]`` images."""
  n, h, w, _ = shape
  raw = np.frombuffer(lzma.decompress(coef), np.int16)
  coefs, start = [], 0
  for s in _coef_shapes(n, h, w):
    size = int(np.prod(s))
    t = (s[3], s[4], s[1], s[2], s[0])
    coefs.append(raw[start:start + size].reshape(t).transpose(4, 2, 3, 0, 1))
    start += size
  if start != raw.size:
    raise ValueError(f"{raw.size} coefficients stored, {start} expected for {list(shape)}")
  res = np.frombuffer(lzma.decompress(residual), np.uint8)
  res = res.reshape(3, n, h, w).transpose(1, 2, 3, 0)
  return predict(*coefs, tables) + res  # uint8 arithmetic wraps: exact mod 256


def sha256(images: np.ndarray) -> str:
  """Hex SHA-256 of the C-ordered uint8 bytes of ``images``."""
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def write(path: str, splits: dict, dataset: str, quality: int = 75,
          preset: int = 9, log=None) -> dict:
  """Writes ``{split: (images uint8 [N, H, W, 3], labels int [N])}`` to ``path``;
  ``log(str)``, when given, hears each split's start and end (coding is the slow part:
  minutes for 50,000 CIFAR images on a small CPU).

  Returns:
    The stored meta dict (with per-split byte counts added under ``bytes``).
  """
  tables = quant_tables(quality)
  meta = {"format": FORMAT, "dataset": dataset, "quality": quality, "splits": {}}
  arrays = {"tables": tables}
  for name, (images, labels) in splits.items():
    images, labels = np.asarray(images), np.asarray(labels)
    _check_images(images)
    if labels.shape != images.shape[:1]:
      raise UsageError(f"split {name!r}: {len(images)} images but labels of shape "
                       f"{list(labels.shape)}")
    t = time.time()
    if log:
      log(f"coding {name}: {len(images):,} images (JPEG coefficients + exact residual, "
          "LZMA) ...")
    coded = encode(images, tables, preset)
    if log:
      log(f"coded {name} in {time.time() - t:.0f}s: "
          f"{sum(len(v) for v in coded.values()):,} bytes")
    arrays[f"{name}_labels"] = labels.astype(np.int32)
    for key, blob in coded.items():
      arrays[f"{name}_{key}"] = np.frombuffer(blob, np.uint8)
    meta["splits"][name] = {"shape": list(images.shape), "sha256": sha256(images),
                            "bytes": {k: len(v) for k, v in coded.items()}}
  arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)  # a failed write or rename leaves no partial file behind
    raise
  return meta


def _damaged(path: str, what: str) -> CompactDataError:
  return CompactDataError(
      f"compact dataset {path!r} {what}; write it again with `python -m "
      "dlpl_jax.compact_data --out PATH` on a host with the prepared TFDS copy")


def read_meta(path: str) -> dict:
  """The meta dict of a compact file (cheap: nothing is decompressed)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CompactDataError(
        f"compact dataset {path!r} does not exist; make it with `python -m "
        f"dlpl_jax.compact_data --out {path}` where the prepared TFDS copy is")
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except  (OSError, zip, pickle, EOF)
    raise _damaged(path, npz.npz_reason(e)) from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise _damaged(path, "is not a compact dataset (a single .npy array, not an .npz "
                   "archive)")
  try:
    with z:
      meta = json.loads(z["meta"].tobytes().decode())
  except Exception as e:  # pylint: disable=broad-except  (zip, KeyError, JSON, OSError)
    raise _damaged(path, f"is unreadable or not a compact dataset ({type(e).__name__}: "
                   f"{' '.join(str(e).split())[:120]})") from None
  if not isinstance(meta, dict):
    raise _damaged(path, "is not a compact dataset (its meta is not a JSON object)")
  if meta.get("format") != FORMAT:
    raise _damaged(path, f"has format {meta.get('format')!r}, this code reads {FORMAT!r}")
  if not isinstance(meta.get("splits"), dict):
    raise _damaged(path, "is not a compact dataset (its meta lists no splits)")
  return meta


def read(path: str, splits=SPLITS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads a compact file back into ``{split: (uint8 [N, H, W, 3], int32 [N])}``.

  Needs only NumPy and the standard library.

  Raises:
    CompactDataError: the file is missing, not a compact dataset, lacks a split, or
      does not decode to the images it was written from (SHA-256 mismatch).
  """
  path = os.fspath(path)
  meta = read_meta(path)
  out = {}
  try:
    with np.load(path, allow_pickle=False) as z:
      tables = z["tables"]
      for name in splits:
        info = meta["splits"].get(name)
        if info is None:
          raise _damaged(path, f"holds no split {name!r} (it holds "
                         f"{sorted(meta['splits'])})")
        images = decode(z[f"{name}_coef"].tobytes(), z[f"{name}_residual"].tobytes(),
                        info["shape"], tables)
        labels = z[f"{name}_labels"].astype(np.int32)
        if sha256(images) != info["sha256"] or labels.shape != images.shape[:1]:
          raise _damaged(path, f"split {name!r} does not decode to the images it was "
                         "written from (checksum mismatch)")
        out[name] = (images, labels)
  except CompactDataError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (zip, lzma, reshape errors)
    raise _damaged(path, f"is damaged ({type(e).__name__}: "
                   f"{' '.join(str(e).split())[:120]})") from None
  return out


def psnr(a: np.ndarray, b: np.ndarray) -> dict:
  """PSNR (dB) of uint8 ``[N, ...]`` images ``a`` against ``b``: over all pixels, and
  the mean and minimum over images (inf where identical)."""
  err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
  per = err.reshape(len(a), -1).mean(1)
  with np.errstate(divide="ignore"):
    db = 10 * np.log10(255.0 ** 2 / per)
    total = 10 * np.log10(255.0 ** 2 / per.mean())
  return {"all": float(total), "mean": float(db.mean()), "worst": float(db.min())}
