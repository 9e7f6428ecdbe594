"""Pseudo-label statistics and metric writers (JSON lines + TensorBoard).

The statistics are NumPy functions of a pseudo-label confusion matrix ``[C, C]`` whose
entry ``[t, k]`` counts unlabeled images of true class ``t`` that got pseudo-label ``k``
(true labels of the unlabeled CIFAR images are known and used for monitoring only).
The writer imports TensorFlow lazily and falls back to JSON lines alone without it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import numpy as np


def pseudo_label_stats(confusion: np.ndarray, prefix: str = "pseudo") -> dict[str, Any]:
  """Class counts, imbalance and accuracy of pseudo-labels from a confusion matrix.

  Args:
    confusion: ``[C, C]`` counts, rows = true class, columns = pseudo-label.
    prefix: key prefix.

  Returns:
    ``{prefix}/counts`` (``[C]`` list of pseudo-label counts), ``{prefix}/imbalance``
    (max count / min count, with the min floored at 1 so an absent class gives a finite,
    large ratio), ``{prefix}/kl_uniform`` (KL(predicted distribution || uniform), nats;
    0 for perfectly balanced pseudo-labels) and ``{prefix}/acc`` (trace / total; NaN when
    there are no pseudo-labels).

  Examples:
    >>> s = pseudo_label_stats(np.array([[3, 1], [0, 0]]))
    >>> s["pseudo/counts"], s["pseudo/imbalance"], round(s["pseudo/acc"], 2)
    ([3, 1], 3.0, 0.75)
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"confusion must be [C, C], got shape {confusion.shape}")
  counts = confusion.sum(axis=0)
  total = counts.sum()
  c = len(counts)
  if total > 0:
    p = counts / total
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(p[nz] * c)))
    acc = float(np.trace(confusion) / total)
  else:
    kl, acc = 0.0, float("nan")
  return {
      f"{prefix}/counts": [int(round(x)) for x in counts],
      f"{prefix}/imbalance": float(counts.max() / max(counts.min(), 1.0)),
      f"{prefix}/kl_uniform": kl,
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


def _to_json(v):
  if isinstance(v, (np.ndarray, np.generic)):
    return v.tolist()
  return v


class MetricWriter:
  """Writes metric dicts to ``WORKDIR/metrics.jsonl`` and TensorBoard event files.

  Scalars go to TensorBoard; lists (per-class values) go to TensorBoard as one scalar
  per class when there are at most 10 classes, and always to the JSON lines. Only
  process 0 writes in a multi-host run.
  """

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        from tensorboard.summary import v2 as _  # noqa: F401  (tf.summary needs it)
        self._tf = tf
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
      except ImportError:
        print("[dlpl_jax] TensorFlow/TensorBoard not installed: events are skipped, "
              "metrics go to metrics.jsonl only", file=sys.stderr)

  def write(self, step: int, kind: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind}
    record.update({k: _to_json(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
    self._jsonl.flush()
    if self._tb is None:
      return
    with self._tb.as_default(step=int(step)):
      for k, v in metrics.items():
        arr = np.asarray(v)
        if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
          self._tf.summary.scalar(k, float(arr))
        elif arr.ndim == 1 and arr.size <= 10 and np.issubdtype(arr.dtype, np.number):
          for i, x in enumerate(arr):
            self._tf.summary.scalar(f"{k}/{i}", float(x))
    self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  """Reads a metrics.jsonl file (ignores a torn last line of a running job)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out
