"""Which images are labeled and which unlabeled: pure NumPy draws that depend only on
the label array and the seed.

* :func:`labeled_indices`: N labeled images per class (the balanced protocol of FixMatch).
* :func:`long_tailed_counts` / :func:`split_lt`: CIFAR-10-LT of DARP (Kim et al.,
  NeurIPS 2020) and USB (Wang et al., NeurIPS 2022), with long-tailed, reversed or
  balanced unlabeled data (consistent and mismatched class distributions).
* :func:`draw_fraction`: a fraction of each class (ImageNet's 0.2% from the 1% subset).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


UNLABELED_PROFILES = ("long_tailed", "reversed", "balanced")


def _as_labels(labels, num_classes: int | None) -> tuple[np.ndarray, int]:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if labels.size else 0
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got values in "
                     f"[{labels.min()}, {labels.max()}]")
  return labels, num_classes


def class_counts(labels, num_classes: int) -> np.ndarray:
  """Number of examples of each class.

  Args:
    labels: ``[N]`` integer labels in ``[0, num_classes)``.
    num_classes: ``C``.

  Returns:
    int64 ``[C]`` counts.
  """
  labels, num_classes = _as_labels(labels, num_classes)
  return np.bincount(labels, minlength=num_classes).astype(np.int64)


def _draw(labels: np.ndarray, counts: Sequence[Sequence[int]], seed: int,
          what: str) -> list[np.ndarray]:
  """Per class c, draws disjoint index sets of sizes counts[j][c] (j = 0, 1, ...).

  Class members are taken in increasing index order and permuted by one
  ``default_rng(seed)`` visited class by class, so the result depends only on the
  label array and the seed. Returns one sorted int64 index array per entry of counts.
  """
  rng = np.random.default_rng(seed)
  num_classes = len(counts[0])
  out = [[] for _ in counts]
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    need = [int(n[c]) for n in counts]
    if min(need) < 0:
      raise ValueError(f"negative count requested for class {c}: {need}")
    if sum(need) > members.size:
      raise ValueError(
          f"class {c} has {members.size} images, fewer than the {sum(need)} "
          f"requested ({what})")
    perm = rng.permutation(members)
    start = 0
    for j, n in enumerate(need):
      out[j].append(perm[start:start + n])
      start += n
  return [np.sort(np.concatenate(parts)).astype(np.int64) if parts
          else np.zeros(0, np.int64) for parts in out]


def labeled_indices(labels, per_class: int, seed: int,
                    num_classes: int | None = None) -> np.ndarray:
  """Indices of ``per_class`` images of each class, drawn with ``default_rng(seed)``.

  Args:
    labels: ``[N]`` integer labels.
    per_class: images to draw from every class.
    seed: seed of the draw; the result depends only on ``labels`` and ``seed``.
    num_classes: ``C``; defaults to ``max(labels) + 1``.

  Returns:
    Sorted int64 ``[C * per_class]`` indices into ``labels``, no duplicates.

  Raises:
    ValueError: a class has fewer than ``per_class`` images.
  """
  labels, num_classes = _as_labels(labels, num_classes)
  return _draw(labels, [[per_class] * num_classes], seed,
               f"{per_class} labeled per class")[0]


def long_tailed_counts(n_max: int, gamma: float, num_classes: int) -> list[int]:
  """Exponentially decaying class sizes of CIFAR-LT: n_k ~ n_max * gamma^(-k/(C-1)).

  Rounding follows DARP's ``make_imb_data`` and USB's ``make_imbalance_data``
  exactly: with mu = (1/gamma)^(1/(C-1)), class k < C-1 gets int(n_max * mu**k)
  (truncation toward zero = floor) and the last class gets int(n_max / gamma).

  >>> long_tailed_counts(1500, 100, 10)
  [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]

  Args:
    n_max: size of the head class 0.
    gamma: imbalance ratio n_0 / n_{C-1}, >= 1.
    num_classes: ``C`` >= 2.

  Returns:
    ``C`` non-increasing counts.
  """
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  if gamma < 1:
    raise ValueError(f"gamma must be >= 1, got {gamma}")
  if n_max < 0:
    raise ValueError(f"n_max must be >= 0, got {n_max}")
  mu = np.power(1 / gamma, 1 / (num_classes - 1))
  counts = [int(n_max * np.power(mu, k)) for k in range(num_classes - 1)]
  return counts + [int(n_max / gamma)]


def split_lt(labels, n1: int, m1: int, gamma: float, seed: int,
             unlabeled_profile: str = "long_tailed",
             num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint labeled / unlabeled indices of a long-tailed SSL split (DARP, USB).

  Labeled class k gets ``long_tailed_counts(n1, gamma, C)[k]`` images. Unlabeled
  class k gets ``long_tailed_counts(m1, gamma, C)[k]`` ('long_tailed'), the count of
  class C-1-k ('reversed'), or m1 ('balanced').

  Args:
    labels: ``[N]`` integer labels.
    n1: labeled images of the head class.
    m1: unlabeled images of the head class (of every class when 'balanced').
    gamma: imbalance ratio, >= 1.
    seed: seed of the draw; the result depends only on ``labels`` and ``seed``.
    unlabeled_profile: 'long_tailed', 'reversed' or 'balanced'.
    num_classes: ``C``; defaults to ``max(labels) + 1``.

  Returns:
    ``(labeled_idx, unlabeled_idx)``: sorted, disjoint int64 index arrays.

  Raises:
    ValueError: a class has too few images, or an unknown profile.
  """
  labels, num_classes = _as_labels(labels, num_classes)
  lab = long_tailed_counts(n1, gamma, num_classes)
  if unlabeled_profile == "long_tailed":
    unl = long_tailed_counts(m1, gamma, num_classes)
  elif unlabeled_profile == "reversed":
    unl = long_tailed_counts(m1, gamma, num_classes)[::-1]
  elif unlabeled_profile == "balanced":
    unl = [int(m1)] * num_classes
  else:
    raise ValueError(f"unknown unlabeled_profile {unlabeled_profile!r}; valid: "
                     f"{', '.join(UNLABELED_PROFILES)}")
  labeled, unlabeled = _draw(
      labels, [lab, unl], seed,
      f"labeled {lab} + unlabeled {unl} ({unlabeled_profile})")
  return labeled, unlabeled


def draw_fraction(labels, fraction: float, seed: int, num_classes: int) -> np.ndarray:
  """Per class ``max(1, round(fraction * n_c))`` of its ``n_c`` images, drawn with
  ``default_rng(seed)`` (class by class, as :func:`labeled_indices`).

  Args:
    labels: ``[N]`` integer labels.
    fraction: in (0, 1].
    seed: the draw's seed.
    num_classes: ``C``; every class must have an image.

  Returns:
    Sorted int64 indices into ``labels``.

  Raises:
    ValueError: a class without images or a fraction outside (0, 1].

  >>> draw_fraction([0] * 5 + [1] * 12, 0.2, 0, 2)  # 1 of class 0, 2 of class 1
  array([ 2,  7, 15])
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() == 0:
    raise ValueError(f"class {int(np.argmin(counts))} has no image to draw from")
  need = [max(1, int(round(fraction * n))) for n in counts]
  return _draw(labels, [need], seed, f"{fraction:.0%} per class")[0]
