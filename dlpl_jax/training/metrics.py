"""Pseudo-label statistics and metric writers (JSON lines + TensorBoard).

The statistics are NumPy functions of a pseudo-label confusion matrix ``[C, C]`` whose
entry ``[t, k]`` counts unlabeled images of true class ``t`` that got pseudo-label ``k``
(true labels of the unlabeled CIFAR images are known and used for monitoring only).
The writer imports TensorFlow lazily and falls back to JSON lines alone without it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from dlpl_jax.errors import log


def pseudo_label_stats(confusion: np.ndarray, prefix: str = "pseudo") -> dict[str, Any]:
  """Class counts, imbalance and accuracy of pseudo-labels from a confusion matrix.

  Args:
    confusion: ``[C, C]`` counts, rows = true class, columns = pseudo-label.
    prefix: key prefix.

  Returns:
    ``{prefix}/counts`` (``[C]`` list of pseudo-label counts), ``{prefix}/imbalance``
    (max count / min count, with the min floored at 1 so an absent class gives a finite,
    large ratio; None when there are no pseudo-labels), ``{prefix}/kl_uniform``
    (KL(predicted distribution || uniform), nats; 0 for perfectly balanced pseudo-labels;
    None when there are none), ``{prefix}/kl_true`` (KL(predicted distribution || true
    class distribution of the same images), nats, the true distribution from the row
    sums with half a count added per class so that it has no zero; the measure of bias
    when the unlabeled data are not balanced, where uniform is not the right target;
    None when there are none) and ``{prefix}/acc`` (trace / total; None when there are
    no pseudo-labels). None is written as JSON ``null``: undefined, never a number.

  Examples:
    >>> s = pseudo_label_stats(np.array([[3, 1], [0, 0]]))
    >>> s["pseudo/counts"], s["pseudo/imbalance"], round(s["pseudo/acc"], 2)
    ([3, 1], 3.0, 0.75)
    >>> pseudo_label_stats(np.zeros((2, 2)), "pseudo_masked")["pseudo_masked/acc"] is None
    True
    >>> # Pseudo-labels in the true classes' proportions: no bias, although not uniform.
    >>> round(pseudo_label_stats(np.array([[90, 0], [0, 10]]))["pseudo/kl_true"], 4)
    0.0
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"confusion must be [C, C], got shape {confusion.shape}")
  counts = confusion.sum(axis=0)
  total = counts.sum()
  c = len(counts)
  kl = kl_true = acc = imbalance = None
  if total > 0:
    p = counts / total
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(p[nz] * c)))
    q = (confusion.sum(axis=1) + 0.5) / (total + 0.5 * c)
    kl_true = float(np.sum(p[nz] * np.log(p[nz] / q[nz])))
    acc = float(np.trace(confusion) / total)
    imbalance = float(counts.max() / max(counts.min(), 1.0))
  return {
      f"{prefix}/counts": [int(round(x)) for x in counts],
      f"{prefix}/imbalance": imbalance,
      f"{prefix}/kl_uniform": kl,
      f"{prefix}/kl_true": kl_true,
      f"{prefix}/acc": acc,
  }


def per_class_precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-class precision and recall ``[C]`` of pseudo-labels (NaN where undefined)."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = tp / confusion.sum(axis=0)
    recall = tp / confusion.sum(axis=1)
  return precision, recall


def to_json(v):
  """Plain JSON values (dicts, lists, numbers, arrays); NaN and infinities become None
  (JSON null), never a bare NaN.

  >>> to_json({"kl": float("inf"), "share": [0.5, float("nan")]})
  {'kl': None, 'share': [0.5, None]}
  """
  if isinstance(v, (np.ndarray, np.generic)):
    v = v.tolist()
  if isinstance(v, float):
    return v if math.isfinite(v) else None
  if isinstance(v, dict):
    return {k: to_json(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [to_json(x) for x in v]
  return v


def confusion_markdown(confusion, class_names: Sequence[str]) -> str:
  """A confusion matrix as a markdown table (rows = true class, with row totals).

  Examples:
    >>> print(confusion_markdown([[3, 1], [0, 2]], ["cat", "dog"]))
    | true \\ pseudo-label | cat | dog | total |
    |---|---:|---:|---:|
    | cat | 3 | 1 | 4 |
    | dog | 0 | 2 | 2 |
  """
  m = np.asarray(confusion, np.int64)
  lines = ["| true \\ pseudo-label | " + " | ".join(class_names) + " | total |",
           "|---|" + "---:|" * (len(class_names) + 1)]
  for name, row in zip(class_names, m):
    lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + f" | {row.sum()} |")
  return "\n".join(lines)


class MetricWriter:
  """Writes metric records to ``WORKDIR/metrics.jsonl`` and TensorBoard event files.

  One record per (step, kind). JSON lines are strict JSON (undefined values are null).
  TensorBoard gets every numeric scalar under its name, per-class lists (up to 10
  classes) as one chart per class named ``{name}/{class name}`` (``class_names``; indices when None), and the
  ``*/confusion`` matrices as markdown tables in the Text tab. TensorBoard holds no state
  of its own: :meth:`rebuild` rewrites it from the JSON lines (after a resume rolled
  them back). Only process 0 writes in a multi-host run.
  """

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True,
               class_names: Sequence[str] | None = None):
    self.enabled = enabled
    self.class_names = list(class_names) if class_names is not None else None
    self._tb = None
    if not enabled:
      return
    self._tb_dir = os.path.join(workdir, "tensorboard")
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        from tensorboard.summary import v2 as _  # noqa: F401  (tf.summary needs it)
        self._tf = tf
        self._tb = tf.summary.create_file_writer(self._tb_dir)
      except ImportError:
        log("TensorFlow/TensorBoard not installed: events are skipped, metrics go to "
            "metrics.jsonl only")

  def rebuild(self, records: Sequence[Mapping[str, Any]]) -> None:
    """Replaces the TensorBoard events with ``records`` (the rolled-back JSON lines)."""
    if not self.enabled or self._tb is None:
      return
    self._tb.close()
    for name in os.listdir(self._tb_dir) if os.path.isdir(self._tb_dir) else []:
      if name.startswith("events.out.tfevents"):
        os.remove(os.path.join(self._tb_dir, name))
    self._tb = self._tf.summary.create_file_writer(self._tb_dir)
    for r in records:
      self._write_tb(r["step"], {k: v for k, v in r.items() if k not in ("step", "kind")})
    self._tb.flush()

  def write(self, step: int, kind: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind}
    record.update({k: to_json(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._write_tb(step, metrics)
      self._tb.flush()

  def _write_tb(self, step: int, metrics: Mapping[str, Any]) -> None:
    tf = self._tf
    with self._tb.as_default(step=int(step)):
      for k, v in metrics.items():
        if v is None:
          continue
        arr = np.asarray(v)
        if not np.issubdtype(arr.dtype, np.number):
          continue
        if arr.ndim == 0:
          if np.isfinite(arr):
            tf.summary.scalar(k, float(arr))
        elif arr.ndim == 1 and arr.size <= 10:
          names = (self.class_names if self.class_names and len(self.class_names) == arr.size
                   else [str(i) for i in range(arr.size)])
          for name, x in zip(names, arr):
            if np.isfinite(x):
              tf.summary.scalar(f"{k}/{name}", float(x))
        elif arr.ndim == 2 and k.endswith("/confusion"):
          names = (self.class_names if self.class_names and len(self.class_names) == len(arr)
                   else [str(i) for i in range(len(arr))])
          tf.summary.text(k, confusion_markdown(arr, names))

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str, damaged: list[int] | None = None) -> list[dict]:
  """Reads a metrics.jsonl file: its JSON objects, skipping a torn last line of a running
  job and any line that is not a JSON object (bytes that are not UTF-8 included).

  ``damaged``: if given, the numbers (from 1) of the skipped lines that are complete,
  i.e. not a torn last line, are appended to it."""
  with open(path, encoding="utf-8", errors="replace") as f:
    return parse_jsonl(f, damaged)


def parse_jsonl(lines: Iterable[str], damaged: list[int] | None = None) -> list[dict]:
  """:func:`read_jsonl` of lines already read (each with its newline, as a file gives)."""
  out = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      record = None
    if isinstance(record, dict):
      out.append(record)
    elif damaged is not None and line.endswith("\n"):
      damaged.append(number)
  return out


def rollback_jsonl(path: str, step: int,
                   log: Callable[[str], None] | None = None) -> list[dict]:
  """Keeps the records of ``path`` up to ``step`` (a resumed run redoes the rest).

  Rewrites the file atomically without the records after ``step``, without a torn or
  unparseable line, and without repeats of a (step, kind). Returns the kept records;
  ``log`` is told of complete lines dropped as unreadable (damage, not a torn end).
  """
  if not os.path.exists(path):
    return []
  kept, seen, damaged = [], set(), []
  records = read_jsonl(path, damaged)
  if damaged and log is not None:
    log(f"note: {path}: dropped {len(damaged)} unreadable line(s) (first: line "
        f"{damaged[0]}), as a damaged record")
  for r in records:
    key = (r.get("step"), r.get("kind"))
    if isinstance(r.get("step"), int) and r["step"] <= step and key not in seen:
      seen.add(key)
      kept.append(r)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in kept:
      f.write(json.dumps({k: to_json(v) for k, v in r.items()}, allow_nan=False) + "\n")
  os.replace(tmp, path)
  return kept
