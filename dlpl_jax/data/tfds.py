"""TFDS datasets as numpy arrays and tf.data streams.

Importing this module does not import TensorFlow; ``load_split`` and ``stream`` import
``tensorflow_datasets`` when called. Reading never downloads: a dataset must already be
prepared under the TFDS data directory (``data_dir`` argument, else the
``TFDS_DATA_DIR`` environment variable, else ``~/tensorflow_datasets``), otherwise a
``FileNotFoundError`` says where it looked and how to fix it; :func:`prepare` (the one
function that downloads, for notebooks) prepares it with TFDS. A prepared dataset whose
files are damaged (a truncated or corrupted TFRecord shard, a missing shard, an
unreadable ``dataset_info.json``) raises ``DataError`` (a ``UsageError``, so a
``ValueError``) whose one-line message names the file, the data directory and how to
repair it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

from dlpl_jax.data import datasets
from dlpl_jax.errors import UsageError, log

TFDS_ENV = "TFDS_DATA_DIR"


class DataError(UsageError):
  """A prepared dataset's files are damaged, missing or unreadable.

  The message is one line: the file (the TFRecord shard when it can be told, else the
  split's files), the data directory, and how to repair them. The TensorFlow error it
  replaces, if any, stays available as ``__context__``. A
  :class:`dlpl_jax.errors.UsageError`, hence a ``ValueError``: the command line
  reports it in one line with exit status 2, and callers that catch ``ValueError``
  keep working.
  """


def _import_tfds():
  """Imports tensorflow and tensorflow_datasets, hiding GPUs from TensorFlow."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UsageError(
        f"reading a TFDS dataset needs TensorFlow and TensorFlow Datasets ({e}): pip "
        "install 'dlpl_jax[train,tensorflow]' (where TensorFlow is installed already, as "
        "on Colab: 'dlpl_jax[train]'), or train from a compact copy "
        "(--config.data_dir=FILE.npz, docs/DATA.md)") from None
  try:  # TF only feeds data; keep it off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialized its devices: nothing to do.
    pass
  return tf, tfds


def resolve_data_dir(data_dir: str | None = None) -> str:
  """The TFDS data directory: ``data_dir``, else $TFDS_DATA_DIR, else the default."""
  return datasets.tfds_data_dir(data_dir)


def _not_prepared(name: str, data_dir: str) -> FileNotFoundError:
  base = name.split(":")[0]
  return FileNotFoundError(
      f"TFDS dataset {name!r} is not prepared in {data_dir!r} (searched "
      f"{os.path.join(data_dir, base)}); training never downloads. Point "
      f"{TFDS_ENV} (or --config.data_dir) at a prepared copy, or prepare one where there "
      f"is internet: tfds build {base.split('/')[0]} --data_dir=DIR (or, in Python, "
      "dlpl_jax.data.tfds.prepare).")


def prepare(name: str = "cifar10", data_dir: str | None = None) -> str:
  """Makes sure that TFDS dataset ``name`` is prepared in ``data_dir`` (default: TFDS's
  own, :func:`resolve_data_dir`): when it is not, TFDS downloads and prepares it (this
  needs internet; CIFAR-10: about 160 MB, a minute or two). The one function of the
  package that downloads: the notebooks call it; the trainer never does.

  Returns:
    The data directory.
  """
  data_dir = resolve_data_dir(data_dir)
  _, tfds = _import_tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    log(f"{name} is prepared in {builder.data_dir}")
  else:
    log(f"preparing {name} in {data_dir}: TFDS downloads it once ...")
    builder.download_and_prepare()
  return data_dir


def _remedy(name: str, data_dir: str) -> str:
  """What to do about damaged files of dataset ``name`` in ``data_dir``."""
  base = name.split(":")[0].split("/")[0]
  hint = (f"re-prepare it with `tfds build {base} --data_dir {data_dir}`, or restore "
          "the files")
  if base == "cifar10":
    hint += "; checksums of the prepared CIFAR-10 are in docs/DATA.md"
  return hint


def _one_line(text: str, limit: int = 240) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _info_problem(path: str) -> str | None:
  """Why ``path`` (a dataset_info.json) is unusable, or None if it looks sound."""
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return f"{type(e).__name__}: {e}"
  if not isinstance(info, dict):
    return f"holds a JSON {type(info).__name__}, not an object"
  missing = [k for k in ("name", "version", "splits") if not info.get(k)]
  if missing:
    return f"lacks {', '.join(missing)}"
  return None


def _info_error(name: str, data_dir: str, path: str, why: str) -> DataError:
  return DataError(
      f"cannot read TFDS dataset {name!r} in data directory {data_dir!r}: {path} is "
      f"unreadable ({_one_line(why)}); {_remedy(name, data_dir)}.")


def _diagnose_info(name: str, data_dir: str) -> DataError | None:
  """A DataError for the first unusable dataset_info.json of ``name``, if any."""
  base = name.split(":")[0].split("/")[0]
  pattern = os.path.join(data_dir, base, "**", "dataset_info.json")
  for path in sorted(glob.glob(pattern, recursive=True)):
    why = _info_problem(path)
    if why is not None:
      return _info_error(name, data_dir, path, why)
  return None


def _prepared_builder(name: str, data_dir: str | None):
  """A TFDS builder for an already prepared dataset.

  Raises:
    FileNotFoundError: not prepared there.
    DataError: its dataset_info.json is unreadable.
  """
  data_dir = resolve_data_dir(data_dir)
  base = name.split(":")[0].split("/")[0]
  # Fast local check before importing TensorFlow (skipped for gs:// and the like).
  local = "://" not in data_dir
  if local and not os.path.isdir(os.path.join(data_dir, base)):
    raise _not_prepared(name, data_dir)
  _, tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _not_prepared(name, data_dir) from e
  except Exception as e:  # pylint: disable=broad-except
    # TFDS wraps a bad dataset_info.json in assorted types (ParseError,
    # RuntimeError, OSError, AssertionError); anything else is re-raised as is.
    error = _diagnose_info(name, data_dir) if local else None
    if error is not None:
      raise error from None
    version = re.search(r"cannot be loaded at version .*", str(e))  # an AssertionError
    if version:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} {_one_line(version.group(0))} Ask for a version "
          f"prepared in {data_dir!r}, or for none (the newest)") from None
    raise
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir)
  return builder


# TensorFlow errors that mean the split's files cannot be read as stored.
# (FailedPreconditionError: TFDS's check of the example count in dataset_info.json.)
_READ_ERRORS = ("DataLossError", "NotFoundError", "PermissionDeniedError",
                "InvalidArgumentError", "FailedPreconditionError")


def _read_errors(tf) -> tuple[type[BaseException], ...]:
  return tuple(getattr(tf.errors, n) for n in _READ_ERRORS) + (OSError,)


def _split_files(builder, name: str, split: str, data_dir: str) -> list[str]:
  """Paths of the TFRecord shards that ``split`` reads, in order, without repeats."""
  try:
    instructions = builder.info.splits[split].file_instructions
  except KeyError:  # TFDS: "`splits` is empty" (dataset_info.json lists none).
    path = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
    why = _info_problem(path) or "it lists no splits"
    raise _info_error(name, data_dir, path, why) from None
  return list(dict.fromkeys(os.fspath(fi.filename) for fi in instructions))


def _files_phrase(files: Sequence[str]) -> str:
  if len(files) == 1:
    return files[0]
  shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
  return f"one of its {len(files)} files ({shown})"


def _count_mismatch(where: str, found: int, expected: int) -> str:
  return (f"{where} holds {found} examples, but dataset_info.json lists {expected} "
          "(a shard is truncated or replaced)")


def _read_error(err: BaseException, name: str, split: str, data_dir: str,
                files: Sequence[str]) -> DataError:
  """The one-line DataError for a TensorFlow / OS error raised reading ``files``."""
  text = str(getattr(err, "message", None) or err)
  text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
  text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
  named = [f for f in files if f in text]
  where = named[0] if named else _files_phrase(files)
  if m := re.search(r"truncated record at (\d+)", text):
    what = f"{where} is truncated (the record at byte {m.group(1)} is cut short)"
  elif m := re.search(r"corrupted record at (\d+)", text):
    what = (f"{where} is corrupted (checksum mismatch in the record at byte "
            f"{m.group(1)})")
  elif m := re.search(r"expected to contain (\d+) elements but contained only (\d+)",
                      text):
    what = _count_mismatch(where, int(m.group(2)), int(m.group(1)))
  elif type(err).__name__ == "NotFoundError" or isinstance(err, FileNotFoundError):
    what = f"{where} is missing"
  else:
    if named:
      text = text.replace(named[0], "").strip(" :;,")
    what = f"{where} is unreadable ({_one_line(text)})"
  return DataError(
      f"cannot read split {split!r} of TFDS dataset {name!r} in data directory "
      f"{data_dir!r}: {what}; {_remedy(name, data_dir)}.")


def _check_files_exist(tf, name: str, split: str, data_dir: str,
                       files: Sequence[str]) -> None:
  for path in files:
    if not tf.io.gfile.exists(path):
      raise DataError(
          f"cannot read split {split!r} of TFDS dataset {name!r} in data directory "
          f"{data_dir!r}: {path} is missing (dataset_info.json lists it); "
          f"{_remedy(name, data_dir)}.")


def _guarded(batches: Iterator, errors: tuple[type[BaseException], ...],
             describe) -> Iterator:
  """Yields from ``batches``; a read error met on the way becomes ``describe(err)``."""
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except errors as e:
      raise describe(e) from None
    yield batch


def load_split(name: str = "cifar10", split: str = "train",
               data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole prepared TFDS split into memory, in its stored order.

  Args:
    name: TFDS name, optionally with version (``'cifar10:3.0.2'``).
    split: TFDS split (``'train'``, ``'test'``, ``'train[:10%]'``, ...).
    data_dir: TFDS data directory; defaults to $TFDS_DATA_DIR.

  Returns:
    ``(images, labels)``: uint8 ``[N, H, W, C]`` and int32 ``[N]``.

  Raises:
    FileNotFoundError: the dataset is not prepared there (nothing is downloaded).
    DataError: a file of the split is missing, truncated or corrupted, it holds fewer
      or more examples than its dataset_info.json lists, or that file is unreadable.
    UsageError: TensorFlow / TensorFlow Datasets are not installed (one line naming
      the extras).
  """
  builder = _prepared_builder(name, data_dir)
  data_dir = resolve_data_dir(data_dir)
  tf, tfds = _import_tfds()
  files = _split_files(builder, name, split, data_dir)
  _check_files_exist(tf, name, split, data_dir, files)
  try:
    ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
    data = tfds.as_numpy(ds)
  except _read_errors(tf) as e:
    raise _read_error(e, name, split, data_dir, files) from None
  images = np.asarray(data["image"], dtype=np.uint8)
  labels = np.asarray(data["label"]).astype(np.int32)
  # A shard cut between two records reads cleanly, short. TFDS checks the count
  # itself (FailedPreconditionError above); this is the backstop.
  expected = builder.info.splits[split].num_examples
  if labels.shape[0] != expected:
    what = _count_mismatch(_files_phrase(files), labels.shape[0], expected)
    raise DataError(
        f"cannot read split {split!r} of TFDS dataset {name!r} in data directory "
        f"{data_dir!r}: {what}; {_remedy(name, data_dir)}.")
  return images, labels


def stream(name: str, split: str, batch_size: int, seed: int,
           data_dir: str | None = None, repeat: bool = True,
           shuffle_buffer: int = 10_000,
           shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled batches of a prepared TFDS split through tf.data, for large datasets.

  Files and examples are shuffled with ``seed`` (reshuffled each epoch); the last
  incomplete batch of an epoch is dropped. With ``shard=(i, n)`` the iterator reads only
  the i-th of n equal, disjoint parts of the split (``tfds.even_splits``, examples left
  over by the division dropped): process i of n reads its own part and feeds its own
  devices.

  Args:
    name: TFDS name, as in ``load_split``.
    split: TFDS split.
    batch_size: examples per batch ``B``.
    seed: shuffle seed.
    data_dir: TFDS data directory; defaults to $TFDS_DATA_DIR.
    repeat: loop over the split forever if True, else one epoch.
    shuffle_buffer: size of the example shuffle buffer.
    shard: ``(index, count)``: read part ``index`` of ``count`` disjoint parts.

  Returns:
    An iterator of ``{'image': uint8 [B, H, W, C], 'label': int32 [B]}``. Records are
    read lazily: a truncated or corrupted shard raises ``DataError`` from ``next``
    when the damaged record is reached.

  Raises:
    FileNotFoundError: the dataset is not prepared there (nothing is downloaded).
    DataError: a file of the split is missing or its dataset_info.json unreadable
      (at the call); a shard is truncated or corrupted (during iteration).
    UsageError: TensorFlow / TensorFlow Datasets are not installed (one line naming
      the extras).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
  builder = _prepared_builder(name, data_dir)
  data_dir = resolve_data_dir(data_dir)
  tf, tfds = _import_tfds()
  files = _split_files(builder, name, split, data_dir)
  _check_files_exist(tf, name, split, data_dir, files)
  part = split if count == 1 else tfds.even_splits(split, n=count, drop_remainder=True)[index]
  ds = builder.as_dataset(split=part, shuffle_files=True,
                          read_config=tfds.ReadConfig(shuffle_seed=seed,
                                                      try_autocache=False))
  ds = ds.map(lambda ex: {"image": ex["image"],
                          "label": tf.cast(ex["label"], tf.int32)},
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _guarded(iter(tfds.as_numpy(ds)), _read_errors(tf),
                  lambda e: _read_error(e, name, split, data_dir, files))
