"""The numbers drawn from a run's eval records: pseudo-label class proportions per
window, the true class shares of the unlabeled images, the confusion matrix of the last
windows, a window's statistic (NaN when undefined), cosine similarity of class means.
Pure NumPy."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dlpl_jax.tools.analyze.runs import ALL, _matrix, _num


def window_stat(r: dict, prefix: str, name: str) -> float:
  """``{prefix}/{name}`` of an eval record (``prefix`` "pseudo" or "pseudo_masked",
  ``name`` "acc", "imbalance", "kl_uniform" or "kl_true"); NaN when undefined: null,
  missing (e.g. written before ``kl_true`` existed: then recomputed from the confusion
  matrix where the record has one), or a
  window without (confident) pseudo-labels."""
  counts = r.get(f"{prefix}/counts")
  try:
    if counts is not None and sum(counts) == 0:
      return float("nan")
  except TypeError:
    pass
  return _num(r.get(f"{prefix}/{name}"))




def proportions(evals: Sequence[dict], key: str = ALL) -> tuple[np.ndarray, np.ndarray]:
  """Per-eval-window pseudo-label class proportions.

  Args:
    evals: eval records (sorted by step).
    key: ``"pseudo/confusion"`` (all pseudo-labels) or ``"pseudo_masked/confusion"``.

  Returns:
    ``steps [E]`` and ``props [E, C]``: column sums of the window's confusion matrix over
    its total (a NaN row for a window without pseudo-labels). Records without ``key``
    are skipped.

  Examples:
    >>> steps, p = proportions([{"step": 5, "pseudo/confusion": [[2, 1], [0, 1]]}])
    >>> steps.tolist(), p.tolist()
    ([5], [[0.5, 0.5]])
  """
  steps, props = [], []
  for r in evals:
    conf = _matrix(r, key)
    if conf is None:
      continue
    counts = conf.sum(axis=0)
    total = counts.sum()
    steps.append(r["step"])
    props.append(counts / total if total > 0 else np.full_like(counts, np.nan))
  if not props:
    return np.zeros((0,), np.int64), np.zeros((0, 0))
  return np.asarray(steps), np.stack(props)


def true_shares(evals: Sequence[dict]) -> np.ndarray | None:
  """The true class shares ``[C]`` of the unlabeled images the run drew (row sums of all
  windows' ``pseudo/confusion``), or None without confusion matrices."""
  mats = [m for m in (_matrix(r, ALL) for r in evals) if m is not None]
  if not mats:
    return None
  rows = np.sum(mats, axis=0).sum(axis=1)
  return rows / rows.sum() if rows.sum() > 0 else None


def skewed(evals: Sequence[dict]) -> bool:
  """Whether the run's unlabeled images are not balanced (long-tailed data): the most
  frequent true class above 1.5x the least, over at least 200 images per class (so that
  sampling noise of a balanced set does not count)."""
  mats = [m for m in (_matrix(r, ALL) for r in evals) if m is not None]
  if not mats:
    return False
  rows = np.sum(mats, axis=0).sum(axis=1)
  return bool(rows.sum() >= 200 * len(rows) and rows.max() > 1.5 * rows.min())


def window_confusion(evals: Sequence[dict], key: str = ALL, last_frac: float = 0.25
                     ) -> tuple[np.ndarray | None, str]:
  """Sums the confusion matrices of the last ``ceil(last_frac * E)`` (at least one) eval
  windows. Returns ``(matrix [C, C] or None, description)``, e.g. "steps 750-1000 (last 2
  of 8 eval windows)"."""
  rs = [r for r in evals if _matrix(r, key) is not None]
  if not rs:
    return None, "no eval windows"
  n = max(1, math.ceil(last_frac * len(rs)))
  picked = rs[-n:]
  conf = np.sum([_matrix(r, key) for r in picked], axis=0)
  start = rs[-n - 1]["step"] if len(rs) > n else 0
  return conf, (f"steps {start}-{picked[-1]['step']} "
                f"(last {n} of {len(rs)} eval window{'s' if len(rs) > 1 else ''})")


def cosine_similarity(class_means: np.ndarray) -> np.ndarray:
  """``[C, C]`` cosine similarity of the rows of ``class_means [C, D]``."""
  x = np.asarray(class_means, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return x @ x.T


def extremes(conf: np.ndarray) -> tuple[int, float, int, float]:
  """``(most, share, least, share)``: the most and least pseudo-labelled classes of a
  confusion matrix and their shares of its pseudo-labels."""
  counts = np.asarray(conf, np.float64).sum(axis=0)
  p = counts / max(counts.sum(), 1e-12)
  hi, lo = int(np.argmax(counts)), int(np.argmin(counts))
  return hi, float(p[hi]), lo, float(p[lo])
