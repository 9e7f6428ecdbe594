"""ImageNet input for the DebiasPL ImageNet recipes: TFDS reading, the labeled splits,
host-made random-resized crops, streamed per process through tf.data.

Datasets (prepared TFDS copies, never downloaded): ``imagenet2012`` (train 1,281,167,
validation 50,000; prepared from the manual download) and ``imagenet2012_subset/1pct``
(TFDS's 1% subset, 12,811 training images: the SimCLR / FixMatch 1% list). The
labeled set of each ``imagenet.split``:

* ``1pct``: the whole ``imagenet2012_subset/1pct`` training split.
* ``0p2pct``: per class ``max(1, round(subset_fraction * n_c))`` of the 1% subset's
  ``n_c`` images of that class (``subset_fraction = 0.2``: 2-3 per class, 2,561 images
  on the real subset, 0.2% of the training split), drawn with ``labeled_seed``
  (:func:`dlpl_jax.data.splits.draw_fraction`): the rule of the official code's random split (its
  ``x_u_split``) applied to the 1% subset, so the 0.2% images are a subset of the 1%
  ones. The official runs read a fixed index list (``train_0.2p_index.csv``), which is
  not distributed with its code.
* ``clip``: the images CLIP labels confidently (a ``zero-shot`` file read by
  :mod:`dlpl_jax.data.clip_labels`), with CLIP's labels as their targets.

Unlabeled set: the whole training split for ``1pct`` / ``0p2pct`` (the FixMatch
protocol this project uses on CIFAR; the official code uses the 99% / 99.8% complement,
which differs by the 1% / 0.2% labeled images); for ``clip`` the images that are not in
the pseudo-labeled set, each with CLIP's label and probability (the fallback target).

Views. Every training image is decoded once on the host and cut into views by
torchvision's ``RandomResizedCrop(crop_size, scale=(crop_scale_min, 1))`` (aspect ratio
in [3/4, 4/3], 10 attempts, then torchvision's fallback: the centre crop of the whole
image, its aspect ratio clamped to [3/4, 4/3]) and a random horizontal flip:
labeled images get one view, unlabeled ones ``num_views`` weak and ``num_views``
strong-view crops; RandAugment and Cutout are applied to the strong crops on the device
(:func:`dlpl_jax.augment.randaugment_cutout`). Evaluation: resize the shorter side to
``eval_resize`` (256), center crop ``crop_size`` (224).

Several processes: process i of n reads the i-th of n disjoint parts of each training
split (``tfds.even_splits``) in batches of ``batch / n``; the validation split is cut
likewise without dropping any image, each process padding its last batches (label -1)
so that all take the same number of evaluation steps.

TensorFlow is imported when a function that reads data is called.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from dlpl_jax.data import clip_labels
from dlpl_jax.data import npz
from dlpl_jax.data import splits
from dlpl_jax.data import tfds as tfds_lib
from dlpl_jax.errors import UsageError

SPLITS = ("1pct", "0p2pct", "clip")


@dataclasses.dataclass(frozen=True)
class ImageNetSpec:
  """What the ImageNet input reads and how it cuts the views (the config's ``imagenet``
  block and the batch sizes; see ``dlpl_jax.configs.get_imagenet_config``).

  ``batch_size`` and ``unlabeled_batch`` are global (all processes together);
  ``seed`` seeds the shuffles and crops, ``labeled_seed`` the 0.2% draw.
  """
  split: str
  data_dir: str
  train_name: str
  subset_name: str
  subset_fraction: float
  crop_size: int
  eval_resize: int
  crop_scale_min: float
  shuffle_buffer: int
  clip_labeled: str
  clip_unlabeled: str
  clip_split_threshold: float
  index_cache: str
  num_classes: int
  num_views: int
  batch_size: int
  unlabeled_batch: int
  eval_batch_size: int
  eval_examples: int
  seed: int
  labeled_seed: int




def imagefolder_order(file_names, labels) -> np.ndarray:
  """Positions of the images in torchvision ``ImageFolder``'s sample list.

  ImageFolder sorts the class folders (ImageNet's wnids, in TFDS's label order) and the
  file names within each: the official index files (and CLIP's ``Index`` column) count
  in that order.

  Args:
    file_names: ``[N]`` file names (``n01440764_10026.JPEG``), any order.
    labels: ``[N]`` their class ids.

  Returns:
    int64 ``[N]``: the ImageFolder index of each image.

  >>> imagefolder_order(["b.JPEG", "a.JPEG", "c.JPEG"], [0, 0, 1]).tolist()
  [1, 0, 2]
  """
  names = np.asarray(file_names).astype(str)
  order = np.lexsort((names, np.asarray(labels)))
  index = np.empty(len(names), np.int64)
  index[order] = np.arange(len(names))
  return index


class Labeled(NamedTuple):
  """Where a run's labeled images come from: a TFDS (name, split), optionally only the
  file names in ``file_names`` with the targets ``targets`` (else the dataset's labels)."""
  name: str
  split: str
  file_names: np.ndarray | None = None
  targets: np.ndarray | None = None


class ClipTargets(NamedTuple):
  """CLIP's label and probability of every unlabeled image, by file name."""
  file_names: np.ndarray
  labels: np.ndarray
  probs: np.ndarray


def _import_tf():
  tf, tfds = tfds_lib._import_tfds()  # pylint: disable=protected-access
  return tf, tfds


def _builder(name: str, data_dir: str | None):
  return tfds_lib._prepared_builder(name, data_dir)  # pylint: disable=protected-access


def _read_meta(name: str, split: str, data_dir: str | None) -> dict[str, np.ndarray]:
  """``file_name`` and ``label`` of every example of a split, in the stored order (the
  images are not decoded; the records are read once)."""
  tf, tfds = _import_tf()
  builder = _builder(name, data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: {"file_name": ex["file_name"], "label": ex["label"]},
              num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
  names, labels = [], []
  for b in tfds.as_numpy(ds):
    names.append(b["file_name"].astype(str))
    labels.append(b["label"].astype(np.int64))
  return {"file_name": np.concatenate(names), "label": np.concatenate(labels)}


def train_file_names(spec: ImageNetSpec) -> dict[str, np.ndarray]:
  """File names and labels of the full training split, cached in ``imagenet.index_cache``
  (an .npz; the first call reads every record of the split once)."""
  o = spec
  path = o.index_cache
  if path and os.path.isfile(path):
    try:
      cached = npz.read_npz(path)
    except UsageError as e:
      raise UsageError(f"imagenet.index_cache: {e}; delete it to rebuild it") from None
    if set(cached) != {"file_name", "label"}:
      raise UsageError(f"imagenet.index_cache {path} holds {sorted(cached)}, not this "
                       "index (file_name, label); delete it to rebuild it")
    return cached
  meta = _read_meta(o.train_name, "train", spec.data_dir or None)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **meta)
  return meta


def labeled_source(spec: ImageNetSpec) -> tuple[Labeled, ClipTargets | None]:
  """The labeled set of ``spec.split`` (and CLIP's targets for ``clip``)."""
  o = spec
  if o.split == "1pct":
    return Labeled(o.subset_name, "train"), None
  if o.split == "0p2pct":
    meta = _read_meta(o.subset_name, "train", spec.data_dir or None)
    idx = splits.draw_fraction(meta["label"], o.subset_fraction, spec.labeled_seed,
                        spec.num_classes)
    return Labeled(o.subset_name, "train", meta["file_name"][idx], meta["label"][idx]), None
  if o.split == "clip":
    return clip_sources(spec)
  raise UsageError(f"bad config: imagenet.split must be one of {SPLITS}, got {o.split!r}")


def clip_sources(spec: ImageNetSpec) -> tuple[Labeled, ClipTargets]:
  """The pseudo-labeled set and the unlabeled set's CLIP targets from the zero-shot files.

  ``spec.clip_labeled`` / ``spec.clip_unlabeled``: the official CSV pair
  (``Index`` = ImageFolder position, ``PseudoLabel``, ``Probs``), or one ``.npz`` of
  logits in ``clip_labeled`` split by :func:`dlpl_jax.data.clip_labels.split_by_confidence` at
  ``clip_split_threshold`` (``clip_unlabeled`` empty).
  """
  o = spec
  meta = train_file_names(spec)
  by_index = np.empty(len(meta["label"]), dtype=meta["file_name"].dtype)
  by_index[imagefolder_order(meta["file_name"], meta["label"])] = meta["file_name"]

  def names(index):
    index = np.asarray(index)
    if index.size and (index.min() < 0 or index.max() >= len(by_index)):
      raise UsageError(f"CLIP predictions index images up to {index.max()}, but the "
                       f"training split has {len(by_index)} images")
    return by_index[index]

  if o.clip_labeled.endswith(".npz"):
    z = clip_labels.read_npz(o.clip_labeled)
    split = clip_labels.split_by_confidence(z.pseudo_labels, z.confidence,
                                         threshold=o.clip_split_threshold)
    lab = (z.index[split.labeled], z.pseudo_labels[split.labeled])
    unl = (z.index[split.unlabeled], z.pseudo_labels[split.unlabeled],
           z.confidence[split.unlabeled])
  else:
    if not o.clip_unlabeled:
      raise UsageError("bad config: imagenet.clip_unlabeled must name the unlabeled CSV "
                       "when imagenet.clip_labeled is a CSV")
    zl = clip_labels.read_csv(o.clip_labeled, spec.num_classes)
    zu = clip_labels.read_csv(o.clip_unlabeled, spec.num_classes)
    lab = (zl.index, zl.pseudo_labels)
    unl = (zu.index, zu.pseudo_labels, zu.confidence)
  return (Labeled(o.train_name, "train", names(lab[0]), np.asarray(lab[1], np.int64)),
          ClipTargets(names(unl[0]), np.asarray(unl[1], np.int64),
                      np.asarray(unl[2], np.float32)))


# ----------------------------------------------------------------------------------
# tf.data: decoding and views.


def _rrc_window(tf, shape, seed, scale_min: float):
  """torchvision ``RandomResizedCrop.get_params``: 10 attempts at a window of area
  ``scale * H * W`` (scale ~ U[scale_min, 1]) and aspect ratio ``w / h`` log-uniform in
  [3/4, 4/3], the first that fits placed uniformly; when none fits, the centre crop of
  the image with its aspect ratio clamped to [3/4, 4/3].

  Returns:
    ``[y0, x0, h, w]`` int32 scalars.
  """
  lo, hi = 3 / 4, 4 / 3
  h = tf.cast(shape[0], tf.float32)
  w = tf.cast(shape[1], tf.float32)
  area = h * w
  seeds = tf.random.experimental.stateless_split(seed, 3)
  u_area = tf.random.stateless_uniform([10], seeds[0], scale_min, 1.0)
  u_ratio = tf.random.stateless_uniform([10], seeds[1], math.log(lo), math.log(hi))
  ratio = tf.exp(u_ratio)
  cw = tf.round(tf.sqrt(area * u_area * ratio))
  ch = tf.round(tf.sqrt(area * u_area / ratio))
  ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
  first = tf.argmax(tf.cast(ok, tf.int32))
  any_ok = tf.reduce_any(ok)
  in_ratio = w / h  # the fallback: clamp the image's own ratio, centre the window
  fw = tf.where(in_ratio > hi, tf.round(h * hi), w)
  fh = tf.where(in_ratio < lo, tf.round(w / lo), h)
  cw = tf.where(any_ok, cw[first], fw)
  ch = tf.where(any_ok, ch[first], fh)
  u = tf.random.stateless_uniform([2], seeds[2])
  y0 = tf.where(any_ok, tf.floor(u[0] * (h - ch + 1)), tf.floor((h - ch) / 2))
  x0 = tf.where(any_ok, tf.floor(u[1] * (w - cw + 1)), tf.floor((w - cw) / 2))
  return [tf.cast(v, tf.int32) for v in (y0, x0, ch, cw)]


def _crop_view(tf, image, seed, size: int, scale_min: float):
  """One random-resized crop + horizontal flip of a decoded ``[H, W, 3]`` uint8 image."""
  s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  y0, x0, ch, cw = _rrc_window(tf, tf.shape(image), s_crop, scale_min)
  crop = tf.image.crop_to_bounding_box(image, y0, x0, ch, cw)
  crop = tf.image.resize(crop, [size, size], method="bilinear", antialias=True)
  crop = tf.image.stateless_random_flip_left_right(crop, s_flip)
  return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)


def _decode(tf, encoded):
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def eval_view(tf, image, size: int, resize: int):
  """Resize the shorter side to ``resize``, then the center ``size`` x ``size`` crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize / tf.reduce_min(shape)
  new = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(image, new, method="bilinear", antialias=True)
  image = tf.image.resize_with_crop_or_pad(image, size, size)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _dataset(spec: ImageNetSpec, name: str, split: str, shard: tuple[int, int], seed: int,
             shuffle: bool, drop_remainder: bool = True):
  """Examples of (a part of) a split, encoded images, shuffled with ``seed``."""
  tf, tfds = _import_tf()
  data_dir = spec.data_dir or None
  builder = _builder(name, data_dir)
  index, count = shard
  part = split if count == 1 else tfds.even_splits(split, n=count,
                                                   drop_remainder=drop_remainder)[index]
  return builder.as_dataset(
      split=part, shuffle_files=shuffle, decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))


def _table(tf, keys, values, default):
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(np.asarray(keys).astype(str)),
                                          tf.constant(values)), default)


def _with_seeds(tf, ds, seed: int):
  """Pairs each example with a per-example stateless seed (a [2] int64 pair)."""
  seeds = tf.data.Dataset.random(seed=seed).batch(2)
  return tf.data.Dataset.zip((ds, seeds))


def labeled_stream(spec: ImageNetSpec, source: Labeled, step: int, shard: tuple[int, int]
                   ) -> Iterator[dict[str, np.ndarray]]:
  """This process's labeled batches: ``{'image': uint8 [B/n, S, S, 3], 'label' [B/n]}``."""
  tf, tfds = _import_tf()
  o = spec
  seed = spec.seed * 1_000_003 + step
  ds = _dataset(spec, source.name, source.split, shard, seed, shuffle=True)
  if source.file_names is not None:
    table = _table(tf, source.file_names, np.asarray(source.targets, np.int64), -1)
    ds = ds.map(lambda ex: {**ex, "label": table.lookup(ex["file_name"])})
    ds = ds.filter(lambda ex: ex["label"] >= 0)
  ds = ds.shuffle(o.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = _with_seeds(tf, ds, seed)

  def view(ex, s):
    image = _decode(tf, ex["image"])
    return {"image": _crop_view(tf, image, s, o.crop_size, o.crop_scale_min),
            "label": tf.cast(ex["label"], tf.int32)}
  ds = ds.map(view, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(spec.batch_size // shard[1], drop_remainder=True)
  return iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))


def unlabeled_stream(spec: ImageNetSpec, step: int, shard: tuple[int, int],
                     clip: ClipTargets | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's unlabeled batches of ``b = B * mu / n`` images::

    {'weak': uint8 [K, b, S, S, 3], 'strong': uint8 [K, b, S, S, 3] (crops, before
     RandAugment), 'label': int32 [b] (true labels, monitoring only)}

  plus ``clip_label`` int32 [b] and ``clip_prob`` float32 [b] with ``clip``.
  """
  tf, tfds = _import_tf()
  o = spec
  k = spec.num_views
  seed = spec.seed * 1_000_003 + step + 7919
  ds = _dataset(spec, o.train_name, "train", shard, seed, shuffle=True)
  if clip is not None:
    lab = _table(tf, clip.file_names, clip.labels.astype(np.int64), -1)
    prob = _table(tf, clip.file_names, clip.probs.astype(np.float32), -1.0)
    ds = ds.map(lambda ex: {**ex, "clip_label": lab.lookup(ex["file_name"]),
                            "clip_prob": prob.lookup(ex["file_name"])})
    ds = ds.filter(lambda ex: ex["clip_label"] >= 0)
  ds = ds.shuffle(o.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = _with_seeds(tf, ds, seed)

  def views(ex, s):
    image = _decode(tf, ex["image"])
    ss = tf.random.experimental.stateless_split(s, 2 * k)
    crops = [_crop_view(tf, image, ss[i], o.crop_size, o.crop_scale_min)
             for i in range(2 * k)]
    out = {"weak": tf.stack(crops[:k]), "strong": tf.stack(crops[k:]),
           "label": tf.cast(ex["label"], tf.int32)}
    if clip is not None:
      out["clip_label"] = tf.cast(ex["clip_label"], tf.int32)
      out["clip_prob"] = ex["clip_prob"]
    return out
  ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(spec.unlabeled_batch // shard[1], drop_remainder=True)

  def to_views(b):  # [b, K, ...] -> [K, b, ...]
    return {**b, "weak": np.swapaxes(b["weak"], 0, 1), "strong": np.swapaxes(b["strong"], 0, 1)}
  return (to_views(b) for b in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))


def eval_batches(spec: ImageNetSpec, shard: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
  """This process's evaluation batches of ``eval_batch_size / n`` validation images
  (resize + center crop), padded with label -1; every process yields the same number
  of batches. ``eval_examples`` > 0 evaluates the first that many images only."""
  tf, tfds = _import_tf()
  o = spec
  index, count = shard
  builder = _builder(o.train_name, spec.data_dir or None)
  total = builder.info.splits["validation"].num_examples
  split = "validation"
  if spec.eval_examples:
    total = min(total, spec.eval_examples)
    split = f"validation[:{total}]"
  local = spec.eval_batch_size // count
  n_batches = -(-(-(-total // count)) // local)
  ds = _dataset(spec, o.train_name, split, shard, 0, shuffle=False, drop_remainder=False)
  ds = ds.map(lambda ex: {"image": eval_view(tf, _decode(tf, ex["image"]), o.crop_size,
                                             o.eval_resize),
                          "label": tf.cast(ex["label"], tf.int32)},
              num_parallel_calls=tf.data.AUTOTUNE)
  it = iter(tfds.as_numpy(ds.batch(local).prefetch(tf.data.AUTOTUNE)))
  s = o.crop_size
  for _ in range(n_batches):
    b = next(it, None)
    if b is None:
      b = {"image": np.zeros((0, s, s, 3), np.uint8), "label": np.zeros((0,), np.int32)}
    pad = local - len(b["label"])
    if pad:
      b = {"image": np.concatenate([b["image"], np.zeros((pad, s, s, 3), np.uint8)]),
           "label": np.concatenate([b["label"], -np.ones(pad, np.int32)])}
    yield b


def num_classes(spec: ImageNetSpec) -> int:
  """The class count of the prepared training dataset (its ``label`` feature)."""
  builder = _builder(spec.train_name, spec.data_dir or None)
  return int(builder.info.features["label"].num_classes)
