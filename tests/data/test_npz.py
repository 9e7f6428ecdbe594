"""dlpl_jax.data.npz: .npz archives read without pickle, every refusal one line naming
the file and never numpy's hint to allow pickle."""

import io
import zipfile

import numpy as np
import pytest

from dlpl_jax.data import npz
from dlpl_jax.errors import UsageError


def _npy_in(path, array):
  with open(path, "wb") as f:  # np.save(path) would add .npy to the name
    np.save(f, array)


def _zip_with_text_member(path):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("notes.txt", "hello")


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"\x00garbage" * 50), "not a zip archive of .npy files"),
    (lambda p: p.write_bytes(b""), "not a valid .npz of arrays"),
    (lambda p: _npy_in(p, np.zeros(3)), "a single .npy array"),
    (lambda p: np.savez(p, a=np.array([{"x": 1}], dtype=object)),
     "holds an array of Python objects"),
    (_zip_with_text_member, "member 'notes.txt' is not an .npy array"),
])
def test_not_an_npz_of_arrays(tmp_path, make, match):
  path = tmp_path / "x.npz"
  make(path)
  with pytest.raises(UsageError, match=match) as e:
    npz.read_npz(str(path))
  assert "allow_pickle" not in str(e.value) and str(path) in str(e.value)
  assert "\n" not in str(e.value)


def test_truncated_and_absent(tmp_path):
  buf = io.BytesIO()
  np.savez(buf, a=np.arange(1000))
  path = tmp_path / "t.npz"
  path.write_bytes(buf.getvalue()[:-100])
  with pytest.raises(UsageError, match="truncated or damaged"):
    npz.read_npz(str(path))
  with pytest.raises(UsageError, match="cannot read .*absent.npz: No such file"):
    npz.read_npz(str(tmp_path / "absent.npz"))
  path.write_bytes(buf.getvalue())
  np.testing.assert_array_equal(npz.read_npz(str(path))["a"], np.arange(1000))


def test_npz_reason():
  assert npz.npz_reason(FileNotFoundError(2, "No such file")) == "does not exist"
  assert npz.npz_reason(PermissionError(13, "Permission denied")) == (
      "cannot be read (Permission denied)")
  assert npz.npz_reason(EOFError("x\ny")).startswith(
      "is not a valid .npz of arrays (truncated or damaged: EOFError: x y")
