"""dlpl_jax.data.compact, the .npz copy format: lossless round trips, the JPEG-style
prediction, bad images refused, damage detected (one line naming the file)."""

import lzma
import os

import numpy as np
import pytest

from dlpl_jax.data import compact as cd
from dlpl_jax.errors import UsageError


def test_quality_50_is_the_standard_table():
  # pylint: disable=protected-access
  np.testing.assert_array_equal(cd.quant_tables(50)[0], cd._LUMA)
  np.testing.assert_array_equal(cd.quant_tables(50)[1], cd._CHROMA)
  assert cd.quant_tables(100).max() == 1
  with pytest.raises(UsageError, match="quality"):
    cd.quant_tables(0)


def test_round_trip_is_exact(tmp_path, mixed_images):
  x, y = mixed_images(40)
  xt, yt = mixed_images(16, seed=1)
  path = str(tmp_path / "c.npz")
  meta = cd.write(path, {"train": (x, y), "test": (xt, yt)}, "cifar10")
  back = cd.read(path)
  np.testing.assert_array_equal(back["train"][0], x)
  np.testing.assert_array_equal(back["test"][0], xt)
  np.testing.assert_array_equal(back["train"][1], y)
  assert back["test"][1].dtype == np.int32
  assert cd.read_meta(path)["splits"]["train"]["sha256"] == meta["splits"]["train"]["sha256"]
  assert cd.read_meta(path)["dataset"] == "cifar10"
  assert cd.is_compact(path) and not cd.is_compact(str(tmp_path)) and not cd.is_compact("")


def test_prediction_is_close_on_smooth_images():
  """The integer JPEG decode of the coefficients is close to the smooth images it coded
  (the residual only corrects it)."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32] / 32
  a = rng.uniform(-1, 1, (20, 1, 1, 3, 3))
  x = 128 + 60 * (a[..., 0] * yy[..., None] + a[..., 1] * xx[..., None]
                  + a[..., 2] * np.sin(3 * xx + yy)[..., None])
  x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
  tables = cd.quant_tables(90)
  pred = cd.predict(*cd.coefficients(x, tables), tables)
  assert 35 < cd.psnr(pred, x)["worst"] < np.inf
  assert cd.psnr(x, x)["worst"] == np.inf


def test_bad_images_refused():
  with pytest.raises(UsageError, match="multiples of 16"):
    cd.encode(np.zeros((2, 24, 24, 3), np.uint8), cd.quant_tables(75))
  with pytest.raises(UsageError, match="uint8"):
    cd.encode(np.zeros((2, 32, 32, 3), np.float32), cd.quant_tables(75))


def test_damage_is_reported(tmp_path, mixed_images):
  x, y = mixed_images(16)
  path = str(tmp_path / "c.npz")
  cd.write(path, {"train": (x, y), "test": (x, y)}, "cifar10")
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  # A residual that decodes, but to other pixels: the checksum catches it.
  res = bytearray(lzma.decompress(arrays["test_residual"].tobytes()))
  res[100] ^= 1
  arrays["test_residual"] = np.frombuffer(lzma.compress(bytes(res)), np.uint8)
  np.savez(path, **arrays)
  with pytest.raises(cd.CompactDataError, match="checksum mismatch"):
    cd.read(path)
  cd.read(path, ("train",))  # the other split is intact
  arrays["train_coef"] = arrays["train_coef"][:-50]  # truncated LZMA stream
  np.savez(path, **arrays)
  with pytest.raises(cd.CompactDataError, match="is damaged"):
    cd.read(path, ("train",))
  with pytest.raises(cd.CompactDataError, match="holds no split 'valid'"):
    cd.read(path, ("valid",))
  with pytest.raises(cd.CompactDataError, match="does not exist.*compact_data --out"):
    cd.read(str(tmp_path / "absent.npz"))
  np.savez(path, a=np.zeros(3))
  with pytest.raises(cd.CompactDataError, match="not a compact dataset"):
    cd.read(path)


def test_garbage_file_and_failed_write(tmp_path, mixed_images):
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not an archive at all" * 10)
  with pytest.raises(cd.CompactDataError, match=r"is not a valid \.npz of arrays") as e:
    cd.read(str(garbage))
  assert "allow_pickle" not in str(e.value)
  npy = tmp_path / "array.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(cd.CompactDataError, match=r"a single \.npy array"):
    cd.read_meta(str(npy))
  # A write that fails at the rename leaves no temporary file behind.
  x, y = mixed_images(16)
  target = tmp_path / "taken.npz"
  target.mkdir()
  with pytest.raises(IsADirectoryError):
    cd.write(str(target), {"train": (x, y)}, "cifar10", preset=0)
  assert sorted(os.listdir(tmp_path)) == ["array.npz", "garbage.npz", "taken.npz"]
