"""Zero-shot (CLIP) pseudo-labels: reading them, splitting them by confidence, and
debiasing them without any training.

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

Training-free debiasing (:func:`debias_set`, and the command): the class marginal
is estimated on the set itself, ``p̂ = mean_i softmax(z_i)``, and the predictions are
logit-adjusted with :func:`dlpl_jax.pseudo_label.debias`:
``q_i = softmax(z_i - τ log p̂)``. The command::

  python -m dlpl_jax.zeroshot --logits preds.npz [--tau 0.4[,1.0,...]] [--out DIR]
      [--split_threshold 0.95] [--top_k_per_class K]

prints top-1 before and after (when ``labels`` are given), the per-class predicted
share before and after (max/min ratio, classes never predicted, KL to uniform and,
with labels, to the true label share), and writes to ``--out``: ``summary.json``
(strict JSON: an undefined value, e.g. the KL to a true share of 0, is null),
``zeroshot_bias.png`` (per-class precision and recall against the predicted share,
before and after, the paper's figure; the sorted shares without labels), and the
confidence split in the official CSV form (``pseudo_labeled.csv``,
``unlabeled.csv``, from the debiased predictions at the first ``τ``). ``τ = 0.4``
is the default, the value of every released DebiasPL script (the zero-shot one
included); this project has no measured zero-shot figure that would pick another.
Every argument is checked before anything is read or written; an error is one line
starting ``[dlpl_jax] error:``, with exit status 2 for bad input.

References:
  Wang et al., DebiasPL, CVPR 2022, https://arxiv.org/abs/2201.01490 (Sec. 4.3,
  zero-shot learning with CLIP).
  Radford et al., CLIP, ICML 2021, https://arxiv.org/abs/2103.00020.
  Menon et al., Long-tail learning via logit adjustment, ICLR 2021,
  https://arxiv.org/abs/2007.07314.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import NamedTuple

import numpy as np

from dlpl_jax import errors
from dlpl_jax import metrics as metrics_lib
from dlpl_jax.errors import UsageError

CSV_COLUMNS = ("Index", "PseudoLabel", "Probs")
DEFAULT_TAU = 0.4
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
  arrays = errors.read_npz(path)
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


def _chunks(n):
  for s in range(0, n, _CHUNK):
    yield slice(s, min(s + _CHUNK, n))


def _predict(logits) -> tuple[np.ndarray, np.ndarray]:
  """Argmax and max of the softmax, chunked."""
  import jax  # pylint: disable=import-outside-toplevel
  pred = np.empty(len(logits), np.int32)
  conf = np.empty(len(logits), np.float32)
  for s in _chunks(len(logits)):
    p = np.asarray(jax.nn.softmax(logits[s], axis=-1))
    pred[s], conf[s] = p.argmax(-1), p.max(-1)
  return pred, conf


def set_marginal(logits: np.ndarray) -> np.ndarray:
  """The class marginal of a whole set: ``mean_i softmax(z_i)``, ``[C]`` float32.

  Computed in chunks as the exact running mean, with
  :func:`dlpl_jax.pseudo_label.update_marginal` at momentum ``n_seen / (n_seen +
  n_chunk)``.

  Args:
    logits: ``[N, C]`` logits.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from dlpl_jax import pseudo_label  # pylint: disable=import-outside-toplevel
  n, c = logits.shape
  marginal = np.full(c, 1.0 / c, np.float32)
  seen = 0
  for s in _chunks(n):
    probs = jax.nn.softmax(np.asarray(logits[s], np.float32), axis=-1)
    m = seen / (seen + probs.shape[0])
    marginal = pseudo_label.update_marginal(marginal, probs, m)
    seen += probs.shape[0]
  return np.asarray(marginal, np.float32)


class Debiased(NamedTuple):
  """What :func:`debias_set` returns.

  Attributes:
    pseudo_labels: ``[N]`` int32 argmax of the debiased distribution.
    confidence: ``[N]`` float32 its max.
    marginal: ``[C]`` float32 the set's marginal that was removed.
  """
  pseudo_labels: np.ndarray
  confidence: np.ndarray
  marginal: np.ndarray


def debias_set(logits: np.ndarray, tau: float = DEFAULT_TAU,
               marginal: np.ndarray | None = None) -> Debiased:
  """Debiased pseudo-labels of a whole set, without training.

  ``q_i = softmax(z_i - tau * log p̂)`` by :func:`dlpl_jax.pseudo_label.debias`,
  with ``p̂`` the set's own marginal (:func:`set_marginal`) unless given.

  Args:
    logits: ``[N, C]`` zero-shot logits.
    tau: debiasing strength, finite and ``>= 0`` (0: CLIP's own predictions).
    marginal: ``[C]`` marginal to remove; default: estimated on ``logits``.

  Returns:
    A :class:`Debiased` ``(pseudo_labels, confidence, marginal)``.
  """
  from dlpl_jax import pseudo_label  # pylint: disable=import-outside-toplevel
  logits = np.asarray(logits)
  if marginal is None:
    marginal = set_marginal(logits)
  pred = np.empty(len(logits), np.int32)
  conf = np.empty(len(logits), np.float32)
  for s in _chunks(len(logits)):
    q = np.asarray(pseudo_label.debias(np.asarray(logits[s], np.float32), marginal, tau))
    pred[s], conf[s] = q.argmax(-1), q.max(-1)
  return Debiased(pred, conf, np.asarray(marginal, np.float32))


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


def share_stats(pred: np.ndarray, num_classes: int,
                labels: np.ndarray | None = None) -> dict:
  """Per-class predicted share and how far it is from uniform (and the truth).

  Args:
    pred: ``[N]`` predicted class ids.
    num_classes: C.
    labels: optional ``[N]`` ground truth.

  Returns:
    A dict: ``share`` ``[C]`` list, ``max_min_ratio`` (None when a class is never
    predicted), ``never_predicted``, ``kl_to_uniform``, and with labels
    ``kl_to_true_share``, ``top1``, ``precision`` / ``recall`` ``[C]`` lists (None
    for a class never predicted / absent).
  """
  n = len(pred)
  count = np.bincount(pred, minlength=num_classes).astype(np.float64)
  share = count / n
  nz = share > 0
  out = {
      "share": share.tolist(),
      "max_min_ratio": float(share.max() / share.min()) if nz.all() else None,
      "never_predicted": int((~nz).sum()),
      "kl_to_uniform": float(np.sum(share[nz] * np.log(share[nz] * num_classes))),
  }
  if labels is not None:
    true = np.bincount(labels, minlength=num_classes).astype(np.float64) / n
    bad = nz & (true == 0)
    out["kl_to_true_share"] = (math.inf if bad.any() else
                               float(np.sum(share[nz] * np.log(share[nz] / true[nz]))))
    hit = pred == labels
    out["top1"] = float(hit.mean())
    tp = np.bincount(labels[hit], minlength=num_classes).astype(np.float64)
    true_count = true * n
    out["precision"] = [float(t / c) if c else None for t, c in zip(tp, count)]
    out["recall"] = [float(t / c) if c else None for t, c in zip(tp, true_count)]
  return out


def _plot(path, before, after, tau, num_classes):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rel = lambda s: np.asarray(s) * num_classes  # noqa: E731
  if "precision" in before:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("precision", "recall")):
      for stats, name, color in ((before, "zero-shot", "tab:gray"),
                                 (after, f"debiased, τ = {tau:g}", "tab:blue")):
        v = np.array([np.nan if x is None else x for x in stats[key]])
        x = rel(stats["share"])
        ok = (x > 0) & np.isfinite(v)
        ax.scatter(x[ok], v[ok], s=8, alpha=0.6, color=color, label=name)
      ax.set_xscale("log")
      ax.axvline(1.0, color="k", lw=0.5, ls=":")
      ax.set_xlabel("predicted share of the class × C (1 = uniform)")
      ax.set_ylabel(f"per-class {key}")
      ax.legend(loc="best", fontsize=8)
    axes[0].set_title("precision vs predicted share")
    axes[1].set_title("recall vs predicted share")
  else:
    fig, ax = plt.subplots(figsize=(6, 4))
    for stats, name, color in ((before, "zero-shot", "tab:gray"),
                               (after, f"debiased, τ = {tau:g}", "tab:blue")):
      ax.plot(np.sort(rel(stats["share"]))[::-1], color=color, label=name)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("class, sorted by predicted share")
    ax.set_ylabel("predicted share × C (1 = uniform)")
    ax.set_title("predicted share per class (no labels given)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _ratio(r):
  return "inf" if r is None else f"{r:.1f}"


def _line(name, s):
  text = (f"{name}: share max/min {_ratio(s['max_min_ratio'])}, never predicted "
          f"{s['never_predicted']}, KL to uniform {s['kl_to_uniform']:.4f}")
  if "top1" in s:
    text = (f"{name}: top-1 {100 * s['top1']:.2f}%, " + text.split(": ", 1)[1]
            + f", KL to true share {s['kl_to_true_share']:.4f}")
  return text


def _taus(text):
  try:
    taus = [float(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise UsageError(f"--tau must be numbers separated by commas, got {text!r}") from None
  if not taus or any(not (math.isfinite(t) and t >= 0) for t in taus):
    raise UsageError(f"--tau values must be finite and >= 0, got {text!r}")
  return taus


def run(logits_path: str, taus=(DEFAULT_TAU,), out: str | None = None,
        split_threshold: float | None = DEFAULT_SPLIT_THRESHOLD,
        top_k_per_class: int | None = None, log=print) -> dict:
  """The command's work: read, debias at each tau, report, write ``out``.

  Every argument is checked before anything is read or computed, and ``out`` is created
  only then.

  Returns:
    The summary dict (also ``out/summary.json`` when ``out`` is given: strict JSON, an
    undefined value such as the KL to a true share of 0 written as null).

  Raises:
    UsageError: a bad ``tau``, split rule or input file, or an ``out`` that cannot be
      written.
  """
  taus = list(taus)
  if not taus or any(not (math.isfinite(t) and t >= 0) for t in taus):
    raise UsageError(f"tau values must be finite and >= 0, got {taus}")
  check_split(split_threshold, top_k_per_class)
  if out:
    errors.check_output(out, "--out", folder=True)
  zs = read_npz(logits_path)
  n, c = zs.logits.shape
  log(f"read {logits_path}: {n:,} images, {c} classes"
      f"{', with labels' if zs.labels is not None else ', no labels'}")
  marginal = set_marginal(zs.logits)
  log(f"marginal of the set (mean softmax): max/min {marginal.max() / marginal.min():.1f}")
  before = share_stats(zs.pseudo_labels, c, zs.labels)
  log(_line("zero-shot", before))
  summary = {"logits": logits_path, "num_images": n, "num_classes": c,
             "has_labels": zs.labels is not None,
             "marginal": marginal.tolist(), "before": before, "after": {}}
  first = None
  for tau in taus:
    d = debias_set(zs.logits, tau, marginal)
    after = share_stats(d.pseudo_labels, c, zs.labels)
    summary["after"][f"{tau:g}"] = after
    log(_line(f"debiased τ={tau:g}", after))
    if first is None:
      first = (tau, d, after)
  if out:
    os.makedirs(out, exist_ok=True)
    tau, d, after = first
    if split_threshold is not None or top_k_per_class is not None:
      split = split_by_confidence(d.pseudo_labels, d.confidence, split_threshold,
                                  top_k_per_class)
      for name, pos in (("pseudo_labeled.csv", split.labeled),
                        ("unlabeled.csv", split.unlabeled)):
        write_csv(os.path.join(out, name), zs.index[pos], d.pseudo_labels[pos],
                  d.confidence[pos])
      summary["split"] = {"tau": tau, "threshold": split_threshold,
                          "top_k_per_class": top_k_per_class,
                          "pseudo_labeled": int(split.labeled.size),
                          "unlabeled": int(split.unlabeled.size)}
      if zs.labels is not None and split.labeled.size:
        summary["split"]["pseudo_labeled_accuracy"] = float(
            (d.pseudo_labels[split.labeled] == zs.labels[split.labeled]).mean())
      log(f"split at τ={tau:g}: {split.labeled.size:,} pseudo-labeled, "
          f"{split.unlabeled.size:,} unlabeled -> {out}/pseudo_labeled.csv, "
          "unlabeled.csv")
    _plot(os.path.join(out, "zeroshot_bias.png"), before, after, tau, c)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(metrics_lib.to_json(summary), f, indent=1, allow_nan=False)
    log(f"wrote {out}/summary.json and {out}/zeroshot_bias.png")
  return summary


def main(argv=None) -> int:
  parser = errors.ArgumentParser(
      prog="python -m dlpl_jax.zeroshot",
      description="Debias zero-shot (CLIP) predictions with the class marginal of "
      "the set itself, without training, and report the bias before and after.")
  parser.add_argument("--logits", required=True,
                      help=".npz with logits [N, C], optional labels [N], image_ids [N]")
  parser.add_argument("--tau", default=str(DEFAULT_TAU),
                      help="debiasing strength(s), comma-separated (default 0.4)")
  parser.add_argument("--out", default=None,
                      help="folder for summary.json, zeroshot_bias.png and the split")
  parser.add_argument("--split_threshold", type=float,
                      default=DEFAULT_SPLIT_THRESHOLD,
                      help="confidence for the pseudo-labeled set (default 0.95); "
                      "a negative value: no threshold (no split without "
                      "--top_k_per_class)")
  parser.add_argument("--top_k_per_class", type=int, default=None,
                      help="pseudo-label only the k most confident images per class")
  args = parser.parse_args(argv)

  def command():
    threshold = None if args.split_threshold < 0 else args.split_threshold
    run(args.logits, _taus(args.tau), args.out, threshold, args.top_k_per_class)

  return errors.run_command(command, paths=(args.logits, args.out))


if __name__ == "__main__":
  sys.exit(main())
