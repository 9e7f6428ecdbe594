"""dlpl_jax.data.tfds: offline errors (not prepared, unknown version, TensorFlow absent),
the real CIFAR-10, and damaged copies of it: every failure is one DataError line naming
the file, the data directory and the repair."""

import os
import pathlib
import sys

import numpy as np
import pytest

from dlpl_jax.data import splits
from dlpl_jax.data import tfds as data
from dlpl_jax.errors import UsageError


def _no_tensorflow():
  raise AssertionError("TensorFlow imported before the quick check of the data folder")


def test_missing_data_fails_fast(tmp_path, monkeypatch):
  """An absent dataset folder is refused before TensorFlow is imported."""
  monkeypatch.setattr(data, "_import_tfds", _no_tensorflow)
  with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR") as info:
    data.load_split("cifar10", "test", data_dir=str(tmp_path))
  assert str(tmp_path) in str(info.value) and "cifar10" in str(info.value)
  with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR"):
    data.stream("cifar10", "test", 8, seed=0, data_dir=str(tmp_path))


def test_dataset_dir_without_prepared_version_fails_fast(tmp_path):
  (tmp_path / "cifar10").mkdir()  # Passes the quick check; TFDS says not prepared.
  with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR"):
    data.load_split("cifar10", "test", data_dir=str(tmp_path))


def test_resolve_data_dir_follows_tfds(tmp_path, monkeypatch):
  assert data.resolve_data_dir(str(tmp_path)) == str(tmp_path)
  monkeypatch.setenv(data.TFDS_ENV, "/elsewhere")
  assert data.resolve_data_dir() == "/elsewhere"
  monkeypatch.delenv(data.TFDS_ENV)
  assert data.resolve_data_dir() == os.path.expanduser("~/tensorflow_datasets")


def test_import_does_not_import_tensorflow(python):
  code = ("import sys\n"
          "from dlpl_jax.data import (clip_labels, compact, datasets, imagenet, in_memory,\n"
          "                           npz, splits, tfds)\n"
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
          "assert not bad, bad\n")
  proc = python(["-c", code], timeout=120)
  assert proc.returncode == 0, proc.stderr


def test_real_cifar10(cifar_dir):
  images, labels = data.load_split("cifar10", "test", data_dir=cifar_dir)
  assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (10000,) and labels.dtype == np.int32
  np.testing.assert_array_equal(splits.class_counts(labels, 10), [1000] * 10)

  batches = data.stream("cifar10", "test", 16, seed=0, data_dir=cifar_dir)
  batch = next(batches)
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32


def test_unknown_version_is_one_clear_error(cifar_dir):
  """TFDS raises an AssertionError for a version it does not know; we say which exist."""
  with pytest.raises(FileNotFoundError,
                     match=r"'cifar10:9\.9\.9' cannot be loaded at version 9\.9\.9, only: "
                           r"3\.0\.2\. Ask for a version prepared in"):
    data.load_split("cifar10:9.9.9", "test", data_dir=cifar_dir)


def test_missing_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  (tmp_path / "cifar10").mkdir()
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails.
  with pytest.raises(UsageError, match=r"pip install 'dlpl_jax\[train,tensorflow\]'") as e:
    data.load_split("cifar10", "test", data_dir=str(tmp_path))
  assert "compact copy" in str(e.value) and "\n" not in str(e.value)


def test_data_error_is_a_usage_error():
  # The command line reports UsageError in one line with exit status 2; callers that
  # catch ValueError keep working.
  assert issubclass(data.DataError, UsageError)
  assert issubclass(data.DataError, ValueError)


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_stream_refuses_a_bad_shard(shard):
  with pytest.raises(ValueError, match="shard"):
    data.stream("cifar10", "train", 8, seed=0, shard=shard)


# ----------------------------------------------------------------------------------
# Damaged copies of the prepared CIFAR-10. Only the small test shard is copied (and
# damaged); the other shard is linked, never written.

TEST_SHARD = "cifar10-test.tfrecord-00000-of-00001"


@pytest.fixture
def damaged_copy(cifar_dir, tmp_path):
  """``damaged_copy(shard_bytes=None, info_text=None, drop_shard=False)``: a data dir in
  tmp_path mirroring the prepared cifar10 with one file replaced; returns ``(data_dir,
  path of the test shard)``."""
  def make(shard_bytes=None, info_text=None, drop_shard=False):
    (src,) = pathlib.Path(cifar_dir, "cifar10").iterdir()  # the version folder
    dst = tmp_path / "data" / "cifar10" / src.name
    dst.mkdir(parents=True)
    for f in src.iterdir():
      if f.name == TEST_SHARD:
        if not drop_shard:
          dst.joinpath(f.name).write_bytes(
              f.read_bytes() if shard_bytes is None else shard_bytes(f))
      elif f.name == "dataset_info.json" and info_text is not None:
        dst.joinpath(f.name).write_text(info_text)
      elif f.suffix in (".json", ".txt"):
        dst.joinpath(f.name).write_bytes(f.read_bytes())
      else:
        dst.joinpath(f.name).symlink_to(f)
    return str(tmp_path / "data"), str(dst / TEST_SHARD)
  return make


def _assert_data_error(info, path, data_dir, *words):
  msg = str(info.value)
  assert isinstance(info.value, ValueError) and "\n" not in msg, msg
  assert path in msg and repr(data_dir) in msg, msg
  assert f"`tfds build cifar10 --data_dir {data_dir}`" in msg, msg
  assert "docs/DATA.md" in msg and "restore the files" in msg, msg
  for word in words:
    assert word in msg, msg
  assert "function_node" not in msg and "[Op:" not in msg, msg


def _record_ends(blob, n):
  """Byte offsets just past each of the first n TFRecord records of blob."""
  ends, pos = [], 0
  for _ in range(n):
    length = int.from_bytes(blob[pos:pos + 8], "little")
    pos += 8 + 4 + length + 4  # length, its CRC, data, data CRC
    ends.append(pos)
  return ends


def test_truncated_shard_names_file(damaged_copy):
  data_dir, shard = damaged_copy(
      shard_bytes=lambda f: f.read_bytes()[:300_000])  # mid-record cut
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "truncated")
  batches = data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir,
                        repeat=False, shuffle_buffer=1)
  with pytest.raises(data.DataError) as info:  # lazy: raised while iterating
    for _ in batches:
      pass
  _assert_data_error(info, shard, data_dir, "truncated")


def test_shard_cut_between_records_is_counted(damaged_copy):
  def three_records(f):
    blob = f.read_bytes()
    return blob[:_record_ends(blob, 3)[-1]]
  data_dir, shard = damaged_copy(shard_bytes=three_records)
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "holds 3 examples", "lists 10000")


def test_missing_shard_names_file(damaged_copy):
  data_dir, shard = damaged_copy(drop_shard=True)
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "is missing")
  with pytest.raises(data.DataError) as info:  # at the call, before iterating
    data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "is missing")


def test_bit_flip_fails_checksum(damaged_copy):
  def flipped(f):
    blob = bytearray(f.read_bytes())
    blob[_record_ends(blob, 1)[0] + 100] ^= 0x10  # inside the second record's data
    return bytes(blob)
  data_dir, shard = damaged_copy(shard_bytes=flipped)
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "corrupted", "checksum")
  with pytest.raises(data.DataError) as info:
    next(data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir,
                     shuffle_buffer=1))
  _assert_data_error(info, shard, data_dir, "corrupted")


@pytest.mark.parametrize("text,why", [
    ('{"name": "cifar10", "spl', "JSONDecodeError"),  # cut short
    ("", "JSONDecodeError"),  # emptied
    ("[]", "JSON list"),
    ('{"name": "cifar10", "version": "3.0.2"}', "lacks splits"),
])
def test_unreadable_dataset_info(damaged_copy, text, why):
  data_dir, shard = damaged_copy(info_text=text)
  info_path = os.path.join(os.path.dirname(shard), "dataset_info.json")
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, info_path, data_dir, why)
  with pytest.raises(data.DataError) as info:
    data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir)
  _assert_data_error(info, info_path, data_dir, why)
