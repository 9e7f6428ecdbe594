"""The semi-supervised splits a run trains on, as in-memory NumPy arrays.

``load(spec)`` reads the TFDS train and test splits once (:mod:`dlpl_jax.data.tfds`),
or, when ``spec.data_dir`` names a ``.npz`` file, the compact copy of
:mod:`dlpl_jax.data.compact` (NumPy only: TensorFlow is not imported), draws the
labeled subset (N per class with a seed, or the CIFAR-LT protocol) and the unlabeled
set, and returns an :class:`SSLData`. The trainer puts these arrays on the device and
draws every step's batch there, so the host does no per-step work.
``synthetic(...)`` makes a small learnable stand-in (tests, benchmarks, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from dlpl_jax.data import compact as compact_data
from dlpl_jax.data import splits
from dlpl_jax.data import tfds
from dlpl_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class LongTail:
  """The CIFAR-LT protocol (:func:`dlpl_jax.data.splits.split_lt`): ``n1`` labeled and
  ``m1`` unlabeled images of the head class, imbalance ``gamma``, and the unlabeled
  profile (long_tailed | reversed | balanced)."""
  n1: int
  m1: int
  gamma: float
  profile: str = "long_tailed"


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which images a run trains and evaluates on.

  ``data_dir``: a TFDS data directory ("" = $TFDS_DATA_DIR, else TFDS's default), or a
  compact ``.npz`` copy. ``lt``: the long-tailed protocol, or None for the balanced
  N-shot one (``labels_per_class`` per class drawn with ``labeled_seed``, the whole
  training split unlabeled). ``eval_examples``: the first N test images (0 = all).
  """
  dataset: str
  num_classes: int
  data_dir: str = ""
  labels_per_class: int = 4
  labeled_seed: int = 0
  lt: LongTail | None = None
  eval_examples: int = 0


class SSLData(NamedTuple):
  """Arrays of one semi-supervised run (uint8 images ``[N, H, W, 3]``, int32 labels).

  ``y_u`` holds the TRUE labels of the unlabeled images, used for monitoring only
  (pseudo-label accuracy); the training signal never reads it.
  """
  x_l: np.ndarray
  y_l: np.ndarray
  x_u: np.ndarray
  y_u: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  def describe(self, num_classes: int) -> str:
    cl = np.bincount(self.y_l, minlength=num_classes)
    cu = np.bincount(self.y_u, minlength=num_classes)
    return (f"labeled {len(self.y_l)} (per class {cl.tolist()}), unlabeled {len(self.y_u)} "
            f"(per class {cu.tolist()}), test {len(self.y_test)}")


def select(spec: DataSpec, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
           y_test: np.ndarray) -> SSLData:
  """Draws the labeled / unlabeled sets from a training split, as ``spec`` says.

  Balanced (``spec.lt`` None): ``labels_per_class`` images per class drawn with
  ``labeled_seed``; the unlabeled set is the whole training split (FixMatch protocol).
  Long-tailed: disjoint labeled/unlabeled sets from
  :func:`dlpl_jax.data.splits.split_lt`.
  """
  c, lt = spec.num_classes, spec.lt
  if lt is not None:
    li, ui = splits.split_lt(y_train, lt.n1, lt.m1, lt.gamma, spec.labeled_seed,
                             lt.profile, c)
  else:
    li = splits.labeled_indices(y_train, spec.labels_per_class, spec.labeled_seed, c)
    ui = np.arange(len(y_train))
  if spec.eval_examples:
    x_test, y_test = x_test[:spec.eval_examples], y_test[:spec.eval_examples]
  return SSLData(x_train[li], y_train[li].astype(np.int32), x_train[ui],
                 y_train[ui].astype(np.int32), x_test, y_test.astype(np.int32))


def _load_compact(spec: DataSpec) -> tuple[np.ndarray, ...]:
  """The train and test splits of the compact file ``spec.data_dir`` (no TensorFlow)."""
  path = spec.data_dir
  stored = compact_data.read_meta(path)["dataset"]
  if stored != spec.dataset:
    raise UsageError(f"{path} holds {stored!r} but config.dataset = {spec.dataset!r}")
  parts = compact_data.read(path, ("train", "test"))
  return parts["train"] + parts["test"]


def load(spec: DataSpec) -> SSLData:
  """Reads the dataset (never downloads) and selects the SSL splits.

  ``spec.data_dir`` is a TFDS data directory ("" = $TFDS_DATA_DIR), or a ``.npz`` file
  of :mod:`dlpl_jax.data.compact`, read with NumPy alone; the same images in the same
  order give the same selection either way.

  Raises:
    FileNotFoundError: within seconds, naming TFDS_DATA_DIR, when the data is absent.
    UsageError: the compact file is missing, damaged or holds another dataset.
  """
  if compact_data.is_compact(spec.data_dir):
    x_train, y_train, x_test, y_test = _load_compact(spec)
  else:
    data_dir = spec.data_dir or None
    x_train, y_train = tfds.load_split(spec.dataset, "train", data_dir)
    x_test, y_test = tfds.load_split(spec.dataset, "test", data_dir)
  n_cls = int(y_train.max()) + 1
  if n_cls != spec.num_classes:
    raise UsageError(f"{spec.dataset} has {n_cls} classes but config.num_classes = "
                     f"{spec.num_classes}")
  return select(spec, x_train, y_train, x_test, y_test)


def synthetic(num_classes: int = 10, labeled_per_class: int = 4, unlabeled: int = 512,
              test: int = 256, image_size: int = 32, seed: int = 0) -> SSLData:
  """A small, learnable stand-in: each class is a noisy colour/stripe pattern.

  Args:
    num_classes: C.
    labeled_per_class: labeled images per class.
    unlabeled: number of unlabeled images (balanced classes).
    test: number of test images.
    image_size: side of the square uint8 images.
    seed: NumPy seed.

  Returns:
    An :class:`SSLData` of uint8 ``[N, image_size, image_size, 3]`` images.
  """
  rng = np.random.default_rng(seed)
  colours = rng.uniform(40, 215, (num_classes, 3))
  freqs = rng.uniform(0.2, 1.2, num_classes)

  def make(n, balanced_labels=None):
    y = (np.arange(n) % num_classes if balanced_labels is None else balanced_labels)
    y = rng.permutation(y).astype(np.int32)
    xx = np.arange(image_size)[None, :, None]
    stripes = 30 * np.sin(freqs[y][:, None, None] * xx)  # [n, 1, W]
    img = colours[y][:, None, None, :] + stripes[..., None] + rng.normal(
        0, 20, (n, image_size, image_size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), y

  x_l, y_l = make(num_classes * labeled_per_class)
  x_u, y_u = make(unlabeled)
  x_t, y_t = make(test)
  return SSLData(x_l, y_l, x_u, y_u, x_t, y_t)
