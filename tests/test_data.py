"""Tests of dlpl_jax.data: splits on synthetic labels, offline errors, real CIFAR-10."""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from dlpl_jax.data import splits
from dlpl_jax.data import tfds as data

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_DATA_DIR = os.environ.get(data.TFDS_ENV) or str(
    REPO.parent / "shared" / "tensorflow_datasets")


def _labels(per_class=(50,) * 10, seed=0):
  labels = np.repeat(np.arange(len(per_class)), per_class)
  return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def test_class_counts():
  np.testing.assert_array_equal(splits.class_counts([0, 2, 2, 3], 5), [1, 0, 2, 1, 0])
  with pytest.raises(ValueError):
    splits.class_counts([0, 5], 5)


def test_labeled_indices():
  labels = _labels()
  idx = splits.labeled_indices(labels, 4, seed=1)
  assert idx.size == 40 and np.unique(idx).size == 40
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), [4] * 10)
  np.testing.assert_array_equal(idx, splits.labeled_indices(labels, 4, seed=1))
  assert not np.array_equal(idx, splits.labeled_indices(labels, 4, seed=2))
  with pytest.raises(ValueError, match="class 3"):
    splits.labeled_indices(_labels((50, 50, 50, 3)), 4, seed=0)


def test_labeled_indices_num_classes():
  # An absent class is only noticed when num_classes says it should exist.
  labels = _labels((5, 5, 5))
  assert splits.labeled_indices(labels, 2, seed=0).size == 6
  with pytest.raises(ValueError, match="class 3"):
    splits.labeled_indices(labels, 2, seed=0, num_classes=4)


def test_long_tailed_counts_hand_computed():
  # mu = 0.01 ** (1/9) = 0.599484...; n_k = floor(n_max * mu**k), last = n_max / 100.
  assert splits.long_tailed_counts(1500, 100, 10) == [
      1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
  assert splits.long_tailed_counts(3000, 100, 10) == [
      3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]
  assert splits.long_tailed_counts(500, 1, 4) == [500] * 4
  with pytest.raises(ValueError):
    splits.long_tailed_counts(100, 0.5, 10)


@pytest.mark.parametrize("profile", ["long_tailed", "reversed", "balanced"])
def test_split_lt(profile):
  labels = _labels((400,) * 10)
  lab, unl = splits.split_lt(labels, 150, 200, 10, seed=0, unlabeled_profile=profile)
  assert np.intersect1d(lab, unl).size == 0
  assert np.unique(lab).size == lab.size and np.unique(unl).size == unl.size
  lt_lab = splits.long_tailed_counts(150, 10, 10)
  lt_unl = splits.long_tailed_counts(200, 10, 10)
  expected_unl = {"long_tailed": lt_unl, "reversed": lt_unl[::-1],
                  "balanced": [200] * 10}[profile]
  np.testing.assert_array_equal(splits.class_counts(labels[lab], 10), lt_lab)
  np.testing.assert_array_equal(splits.class_counts(labels[unl], 10), expected_unl)
  lab2, unl2 = splits.split_lt(labels, 150, 200, 10, seed=0, unlabeled_profile=profile)
  np.testing.assert_array_equal(lab, lab2)
  np.testing.assert_array_equal(unl, unl2)


def test_split_lt_reversed_is_mirror_and_errors():
  labels = _labels((400,) * 10)
  _, fwd = splits.split_lt(labels, 100, 300, 100, seed=3)
  _, rev = splits.split_lt(labels, 100, 300, 100, seed=3, unlabeled_profile="reversed")
  np.testing.assert_array_equal(splits.class_counts(labels[rev], 10),
                                splits.class_counts(labels[fwd], 10)[::-1])
  with pytest.raises(ValueError, match="class 0"):  # 150 + 300 > 400
    splits.split_lt(labels, 150, 300, 100, seed=0)
  with pytest.raises(ValueError, match="unlabeled_profile"):
    splits.split_lt(labels, 10, 10, 10, seed=0, unlabeled_profile="uniform")


def test_missing_data_fails_fast(tmp_path):
  start = time.monotonic()
  with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR") as info:
    data.load_split("cifar10", "test", data_dir=str(tmp_path))
  assert str(tmp_path) in str(info.value) and "cifar10" in str(info.value)
  with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR"):
    data.stream("cifar10", "test", 8, seed=0, data_dir=str(tmp_path))
  assert time.monotonic() - start < 5


def test_dataset_dir_without_prepared_version_fails_fast(tmp_path):
  (tmp_path / "cifar10").mkdir()  # Passes the quick check; TFDS says not prepared.
  start = time.monotonic()
  with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR"):
    data.load_split("cifar10", "test", data_dir=str(tmp_path))
  assert time.monotonic() - start < 30  # Includes importing TensorFlow.


def test_import_does_not_import_tensorflow():
  code = ("import sys, dlpl_jax.data; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _real_data_prepared():
  return os.path.isdir(os.path.join(REAL_DATA_DIR, "cifar10"))


@pytest.mark.skipif(not _real_data_prepared(),
                    reason=f"CIFAR-10 not prepared in {REAL_DATA_DIR}")
def test_real_cifar10():
  images, labels = data.load_split("cifar10", "test", data_dir=REAL_DATA_DIR)
  assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (10000,) and labels.dtype == np.int32
  np.testing.assert_array_equal(splits.class_counts(labels, 10), [1000] * 10)

  batches = data.stream("cifar10", "test", 16, seed=0, data_dir=REAL_DATA_DIR)
  batch = next(batches)
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32


@pytest.mark.skipif(not _real_data_prepared(),
                    reason=f"CIFAR-10 not prepared in {REAL_DATA_DIR}")
def test_unknown_version_is_one_clear_error():
  """TFDS raises an AssertionError for a version it does not know; we say which exist."""
  with pytest.raises(FileNotFoundError,
                     match=r"'cifar10:9\.9\.9' cannot be loaded at version 9\.9\.9, only: "
                           r"3\.0\.2\. Ask for a version prepared in"):
    data.load_split("cifar10:9.9.9", "test", data_dir=REAL_DATA_DIR)


def test_missing_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  (tmp_path / "cifar10").mkdir()
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails.
  with pytest.raises(ImportError, match="pip install tensorflow-cpu tensorflow-data"):
    data.load_split("cifar10", "test", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------------
# Damaged copies of the prepared CIFAR-10: every failure is one DataError line naming
# the file, the data directory and the repair. Only the small test shard is copied
# (and damaged); the other shard is linked, never written.

TEST_SHARD = "cifar10-test.tfrecord-00000-of-00001"
needs_real_data = pytest.mark.skipif(
    not _real_data_prepared(), reason=f"CIFAR-10 not prepared in {REAL_DATA_DIR}")


def _damaged_copy(tmp_path, shard_bytes=None, info_text=None, drop_shard=False):
  """A data dir in tmp_path mirroring the prepared cifar10, with one file replaced."""
  (src,) = pathlib.Path(REAL_DATA_DIR, "cifar10").iterdir()  # the version folder
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


@needs_real_data
def test_truncated_shard_names_file(tmp_path):
  data_dir, shard = _damaged_copy(
      tmp_path, shard_bytes=lambda f: f.read_bytes()[:300_000])  # mid-record cut
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "truncated")
  batches = data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir,
                        repeat=False, shuffle_buffer=1)
  with pytest.raises(data.DataError) as info:  # lazy: raised while iterating
    for _ in batches:
      pass
  _assert_data_error(info, shard, data_dir, "truncated")


@needs_real_data
def test_shard_cut_between_records_is_counted(tmp_path):
  def three_records(f):
    blob = f.read_bytes()
    return blob[:_record_ends(blob, 3)[-1]]
  data_dir, shard = _damaged_copy(tmp_path, shard_bytes=three_records)
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "holds 3 examples", "lists 10000")


@needs_real_data
def test_missing_shard_names_file(tmp_path):
  data_dir, shard = _damaged_copy(tmp_path, drop_shard=True)
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "is missing")
  with pytest.raises(data.DataError) as info:  # at the call, before iterating
    data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "is missing")


@needs_real_data
def test_bit_flip_fails_checksum(tmp_path):
  def flipped(f):
    blob = bytearray(f.read_bytes())
    blob[_record_ends(blob, 1)[0] + 100] ^= 0x10  # inside the second record's data
    return bytes(blob)
  data_dir, shard = _damaged_copy(tmp_path, shard_bytes=flipped)
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, shard, data_dir, "corrupted", "checksum")
  with pytest.raises(data.DataError) as info:
    next(data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir,
                     shuffle_buffer=1))
  _assert_data_error(info, shard, data_dir, "corrupted")


@needs_real_data
@pytest.mark.parametrize("text,why", [
    ('{"name": "cifar10", "spl', "JSONDecodeError"),  # cut short
    ("", "JSONDecodeError"),  # emptied
    ("[]", "JSON list"),
    ('{"name": "cifar10", "version": "3.0.2"}', "lacks splits"),
])
def test_unreadable_dataset_info(tmp_path, text, why):
  data_dir, shard = _damaged_copy(tmp_path, info_text=text)
  info_path = os.path.join(os.path.dirname(shard), "dataset_info.json")
  with pytest.raises(data.DataError) as info:
    data.load_split("cifar10", "test", data_dir=data_dir)
  _assert_data_error(info, info_path, data_dir, why)
  with pytest.raises(data.DataError) as info:
    data.stream("cifar10", "test", 16, seed=0, data_dir=data_dir)
  _assert_data_error(info, info_path, data_dir, why)


def test_data_error_is_a_usage_error():
  # The command line reports UsageError in one line with exit status 2; callers that
  # catch ValueError keep working.
  from dlpl_jax.errors import UsageError  # pylint: disable=import-outside-toplevel
  assert issubclass(data.DataError, UsageError)
  assert issubclass(data.DataError, ValueError)


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_stream_refuses_a_bad_shard(shard):
  with pytest.raises(ValueError, match="shard"):
    data.stream("cifar10", "train", 8, seed=0, shard=shard)
