"""Zero-shot (CLIP) pseudo-label files: reading them and splitting them by confidence.

Two input forms of precomputed zero-shot predictions on the training images:

* the official DebiasPL CSV (:func:`read_csv`): columns ``Index`` (the image's
  position in torchvision ``ImageFolder``'s sorted sample list of the training
  split), ``PseudoLabel`` (CLIP's class id) and ``Probs`` (CLIP's softmax
  probability of that class); other columns are ignored. The official zero-shot
  recipe ships two such files, ``CLIPPseudoLabel0.95.csv`` (the pseudo-labeled set)
  and ``CLIPPseudoLabel0.95-Unselected.csv`` (the unlabeled set);
* an ``.npz`` of logits (:func:`read_npz`): ``logits`` ``[N, C]`` (what CLIP's
  softmax is taken of, i.e. including its logit scale, 100 for the released
  models), optional ``labels`` ``[N]`` (ground truth, for evaluation only) and
  optional ``image_ids`` ``[N]``.

The split (:func:`split_by_confidence`). The released code does not contain the
rule that made the two CSVs, only the files; their name points at a confidence
threshold of 0.95 on CLIP's probability, and that is the default here (``Probs >=
0.95`` goes to the pseudo-labeled set, the rest to the unlabeled set).
``top_k_per_class`` selects instead the k most confident images of each predicted
class (with the threshold, if both are given, an image must pass both), a
class-balanced alternative. The official training code then uses, for the
unlabeled set, CLIP's label as a fallback target where the model's own (debiased)
pseudo-label is below its threshold and CLIP's ``Probs >= 0.3`` (0.4 in the
semi-supervised scripts with CLIP); that belongs to the training recipe, and
:func:`read_csv` / :class:`ZeroShot` give it the arrays it needs.
"""

from __future__ import annotations

import csv
import math
from typing import NamedTuple

import numpy as np

from dlpl_jax.data import npz
from dlpl_jax.errors import UsageError


CSV_COLUMNS = ("Index", "PseudoLabel", "Probs")


DEFAULT_SPLIT_THRESHOLD = 0.95


_CHUNK = 8192


class ZeroShot(NamedTuple):
  """Zero-shot predictions of N training images.

  Attributes:
    index: ``[N]`` int64 image positions (CSV ``Index``; ``arange(N)`` for .npz).
    pseudo_labels: ``[N]`` int32 predicted class ids.
    confidence: ``[N]`` float32 probability of the predicted class.
    logits: ``[N, C]`` float32 or None (the CSV has none).
    labels: ``[N]`` int32 ground truth or None.
    image_ids: ``[N]`` ids from the .npz, or None.
  """
  index: np.ndarray
  pseudo_labels: np.ndarray
  confidence: np.ndarray
  logits: np.ndarray | None = None
  labels: np.ndarray | None = None
  image_ids: np.ndarray | None = None


def _integer(text: str) -> int | None:
  """``text`` as an integer ("12", "12.0", "1e3"), or None when it is not one."""
  try:
    return int(text)
  except ValueError:
    pass
  try:
    f = float(text)
  except ValueError:
    return None
  return int(f) if math.isfinite(f) and f == int(f) else None


def _int_column(path, name, values, lines) -> np.ndarray:
  out = np.empty(len(values), np.int64)
  for i, (v, line) in enumerate(zip(values, lines)):
    n = _integer(v)
    if n is None:
      raise UsageError(f"{path}, line {line}, column {name}: {v!r} is not an integer")
    if not -2 ** 63 <= n < 2 ** 63:
      raise UsageError(f"{path}, line {line}, column {name}: {v!r} is beyond the int64 "
                       "range")
    out[i] = n
  return out


def _float_column(path, name, values, lines) -> np.ndarray:
  out = np.empty(len(values), np.float64)
  for i, (v, line) in enumerate(zip(values, lines)):
    try:
      out[i] = float(v)
    except ValueError:
      raise UsageError(f"{path}, line {line}, column {name}: {v!r} is not a "
                       "number") from None
  return out


def _csv_rows(path: str) -> list[tuple[int, list[str]]]:
  """``(line, cells)`` of each row of a CSV file, ``line`` the row's first line in the
  file (the header is line 1); UTF-8, with or without a byte-order mark."""
  rows, line = [], 1
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      try:
        for r in reader:
          rows.append((line, r))
          line = reader.line_num + 1
      except csv.Error as e:
        raise UsageError(f"{path}, line {reader.line_num}: {e}") from None
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
  except UnicodeDecodeError as e:
    raise UsageError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} near "
                     f"line {line}); save the CSV as UTF-8") from None
  return rows


def read_csv(path: str, num_classes: int | None = None) -> ZeroShot:
  """Reads the official DebiasPL CSV (``Index``, ``PseudoLabel``, ``Probs``).

  The file is UTF-8 (a byte-order mark is allowed). Errors name the line of the file
  (the header is line 1).

  Args:
    path: the CSV file (a header row, then one row per image).
    num_classes: if given, pseudo-labels must lie in ``[0, num_classes)``.

  Returns:
    A :class:`ZeroShot` without logits or labels.

  Raises:
    UsageError: the file is missing, empty or not UTF-8 text, a column is missing, an
      ``Index`` or ``PseudoLabel`` is not a non-negative integer in the int64 range (or
      out of range), an index repeats, a ``Probs`` is not a finite number in [0, 1].
  """
  rows = _csv_rows(path)
  if not rows:
    raise UsageError(f"{path} is empty; expected a header {','.join(CSV_COLUMNS)}")
  header = [h.strip() for h in rows[0][1]]
  missing = [c for c in CSV_COLUMNS if c not in header]
  if missing:
    raise UsageError(f"{path}: no column {missing[0]!r}; expected columns "
                     f"{', '.join(CSV_COLUMNS)}, found {', '.join(header) or 'none'}")
  body = [(n, r) for n, r in rows[1:] if any(cell.strip() for cell in r)]
  if not body:
    raise UsageError(f"{path} has a header but no rows")
  for n, r in body:
    if len(r) != len(header):
      raise UsageError(f"{path}, line {n}: {len(r)} fields, the header (line 1) "
                       f"{len(header)}")
  lines = np.array([n for n, _ in body], np.int64)
  col = {c: [r[header.index(c)].strip() for _, r in body] for c in CSV_COLUMNS}
  index = _int_column(path, "Index", col["Index"], lines)
  labels = _int_column(path, "PseudoLabel", col["PseudoLabel"], lines)
  probs = _float_column(path, "Probs", col["Probs"], lines)
  _check_values(path, lines, index, labels, probs, num_classes)
  return ZeroShot(index, labels.astype(np.int32), probs.astype(np.float32))


def _check_values(path, lines, index, labels, probs, num_classes):
  """Index non-negative and unique, labels in range, probabilities in [0, 1]; errors
  name the file's line (``lines[i]`` of row i)."""
  bad = np.flatnonzero(index < 0)
  if bad.size:
    raise UsageError(f"{path}, line {lines[bad[0]]}: Index {index[bad[0]]} is negative")
  uniq, counts = np.unique(index, return_counts=True)
  if uniq.size != index.size:
    dup, times = uniq[counts > 1][0], counts[counts > 1][0]
    where = lines[np.flatnonzero(index == dup)[:2]]
    raise UsageError(f"{path}: Index {dup} appears {times} times (lines {where[0]} and "
                     f"{where[1]})")
  hi = num_classes if num_classes is not None else 2 ** 31  # stored as int32
  bad = np.flatnonzero((labels < 0) | (labels >= hi))
  if bad.size:
    raise UsageError(f"{path}, line {lines[bad[0]]}: PseudoLabel {labels[bad[0]]} is "
                     f"outside [0, {hi})")
  bad = np.flatnonzero(~np.isfinite(probs) | (probs < 0) | (probs > 1))
  if bad.size:
    raise UsageError(f"{path}, line {lines[bad[0]]}: Probs {probs[bad[0]]} is not a "
                     "probability in [0, 1]")


def read_npz(path: str) -> ZeroShot:
  """Reads zero-shot logits: ``logits [N, C]``, optional ``labels [N]``,
  ``image_ids [N]``.

  The pseudo-labels and confidences are CLIP's own (argmax and max of the softmax,
  before any debiasing).

  Raises:
    UsageError: the file is missing, unreadable or not an .npz of arrays, ``logits``
      is absent, not a floating ``[N >= 1, C >= 2]`` array, not finite or beyond
      float32's range (they are used in float32), ``labels`` or ``image_ids`` have
      another length, ``labels`` are not integers in ``[0, C)``.
  """
  arrays = npz.read_npz(path)
  if "logits" not in arrays:
    raise UsageError(f"{path}: no 'logits' array (found {', '.join(arrays) or 'none'})")
  logits = arrays["logits"]
  if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
    raise UsageError(f"{path}: logits must be [N >= 1, C >= 2], got shape "
                     f"{logits.shape}")
  if not np.issubdtype(logits.dtype, np.floating):
    raise UsageError(f"{path}: logits must be floating point, got {logits.dtype}")
  finite = np.isfinite(logits).all(axis=1)
  if not finite.all():
    raise UsageError(f"{path}: logits of row {np.flatnonzero(~finite)[0]} are not "
                     f"finite ({int((~finite).sum())} such rows)")
  n, c = logits.shape
  labels = arrays.get("labels")
  if labels is not None:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
      raise UsageError(f"{path}: labels must be [N] = ({n},) integers, got shape "
                       f"{labels.shape} dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
      raise UsageError(f"{path}: label {labels[bad[0]]} (row {bad[0]}) is outside "
                       f"[0, {c})")
    labels = labels.astype(np.int32)
  ids = arrays.get("image_ids")
  if ids is not None and ids.shape != (n,):
    raise UsageError(f"{path}: image_ids must have shape ({n},), got {ids.shape}")
  with np.errstate(over="ignore"):
    logits = logits.astype(np.float32)
  finite = np.isfinite(logits).all(axis=1)
  if not finite.all():
    raise UsageError(f"{path}: logits of row {np.flatnonzero(~finite)[0]} hold values "
                     f"beyond float32's range (|x| > {np.finfo(np.float32).max:.3g}; "
                     f"{int((~finite).sum())} such rows); they are used in float32")
  pred, conf = _predict(logits)
  return ZeroShot(np.arange(n, dtype=np.int64), pred, conf, logits, labels, ids)


def chunks(n):
  for s in range(0, n, _CHUNK):
    yield slice(s, min(s + _CHUNK, n))


def _predict(logits) -> tuple[np.ndarray, np.ndarray]:
  """Argmax and max of the softmax, chunked."""
  import jax  # pylint: disable=import-outside-toplevel
  pred = np.empty(len(logits), np.int32)
  conf = np.empty(len(logits), np.float32)
  for s in chunks(len(logits)):
    p = np.asarray(jax.nn.softmax(logits[s], axis=-1))
    pred[s], conf[s] = p.argmax(-1), p.max(-1)
  return pred, conf


class Split(NamedTuple):
  """Positions (into the arrays, not ``Index`` values) of the two sets.

  Attributes:
    labeled: ``[L]`` int64 positions of the pseudo-labeled set, ascending.
    unlabeled: ``[N - L]`` int64 positions of the rest, ascending.
  """
  labeled: np.ndarray
  unlabeled: np.ndarray


def check_split(threshold: float | None, top_k_per_class: int | None) -> None:
  """Raises UsageError unless ``threshold`` is None or in [0, 1] and
  ``top_k_per_class`` is None or an integer >= 1 (the rules of
  :func:`split_by_confidence`)."""
  if threshold is not None and not 0.0 <= threshold <= 1.0:
    raise UsageError(f"split threshold must lie in [0, 1], got {threshold}")
  if top_k_per_class is not None and (
      isinstance(top_k_per_class, bool) or
      not isinstance(top_k_per_class, (int, np.integer)) or top_k_per_class < 1):
    raise UsageError(f"top_k_per_class must be an integer >= 1, got {top_k_per_class}")


def split_by_confidence(pseudo_labels: np.ndarray, confidence: np.ndarray,
                        threshold: float | None = DEFAULT_SPLIT_THRESHOLD,
                        top_k_per_class: int | None = None) -> Split:
  """Splits zero-shot predictions into a pseudo-labeled and an unlabeled set.

  Args:
    pseudo_labels: ``[N]`` predicted class ids.
    confidence: ``[N]`` probability of the predicted class.
    threshold: an image is pseudo-labeled if ``confidence >= threshold`` (0.95, the
      official files' name); None: no threshold.
    top_k_per_class: if given, only the k most confident images of each predicted
      class are pseudo-labeled (ties broken by position); combined with the
      threshold when both are given.

  Returns:
    A :class:`Split` of positions.

  Raises:
    UsageError: neither rule given, a threshold outside [0, 1], k < 1, or arrays of
      different lengths.

  Examples:
    >>> import numpy as np
    >>> s = split_by_confidence(np.array([0, 0, 1, 1, 0]),
    ...                         np.array([.99, .97, .5, .96, .98]), 0.95, 1)
    >>> print(s.labeled, s.unlabeled)
    [0 3] [1 2 4]
  """
  pseudo_labels, confidence = np.asarray(pseudo_labels), np.asarray(confidence)
  if pseudo_labels.shape != confidence.shape or pseudo_labels.ndim != 1:
    raise UsageError(f"pseudo_labels {pseudo_labels.shape} and confidence "
                     f"{confidence.shape} must both be [N]")
  if threshold is None and top_k_per_class is None:
    raise UsageError("give a threshold, a top_k_per_class, or both")
  check_split(threshold, top_k_per_class)
  keep = np.ones(len(confidence), bool)
  if threshold is not None:
    keep &= confidence >= threshold
  if top_k_per_class is not None:
    # Most confident first, then by position: stable sort of -confidence per class.
    order = np.lexsort((np.arange(len(confidence)), -confidence, pseudo_labels))
    sorted_labels = pseudo_labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(order)) - starts
    top = np.zeros(len(confidence), bool)
    top[order[rank < top_k_per_class]] = True
    keep &= top
  return Split(np.flatnonzero(keep), np.flatnonzero(~keep))


def write_csv(path: str, index: np.ndarray, pseudo_labels: np.ndarray,
              confidence: np.ndarray) -> None:
  """Writes the official CSV form (``Index``, ``PseudoLabel``, ``Probs``)."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    for i, y, p in zip(index, pseudo_labels, confidence):
      w.writerow((int(i), int(y), f"{float(p):.6f}"))
