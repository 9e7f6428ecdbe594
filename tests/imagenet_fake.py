"""A tiny ImageNet-shaped TFDS dataset for tests: ``fake_imagenet`` (train, validation)
and ``fake_imagenet_subset/1pct`` (a part of its train split), with the features of
``imagenet2012`` (JPEG ``image``, ``label``, ``file_name``), written in a temp folder."""

from __future__ import annotations

import numpy as np

TRAIN = "fake_imagenet"
SUBSET = "fake_imagenet_subset/1pct"


def _images(rng, n, num_classes, size):
  labels = np.arange(n) % num_classes
  colours = np.linspace(30, 220, num_classes)[:, None] * np.array([1.0, 0.6, 0.3])
  img = colours[labels][:, None, None, :] + rng.normal(0, 15, (n, size, size + 8, 3))
  return np.clip(img, 0, 255).astype(np.uint8), labels


def build(data_dir: str, num_classes: int = 10, train_per_class: int = 12,
          subset_per_class: int = 5, val: int = 40, size: int = 48, seed: int = 0) -> None:
  """Writes the two datasets under ``data_dir`` (a few seconds)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
      "file_name": tfds.features.Text()})

  def examples(images, labels, prefix):
    return [(f"{prefix}{i}", {"image": im, "label": int(y),
                             "file_name": f"n{int(y):08d}_{prefix}{i}.JPEG"})
            for i, (im, y) in enumerate(zip(images, labels))]
  x, y = _images(rng, num_classes * train_per_class, num_classes, size)
  train = examples(x, y, "")
  xv, yv = _images(rng, val, num_classes, size)
  tfds.dataset_builders.store_as_tfds_dataset(
      name=TRAIN, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": train, "validation": examples(xv, yv, "val")})
  per_class = {}
  subset = []
  for key, ex in train:
    if per_class.get(ex["label"], 0) < subset_per_class:
      per_class[ex["label"]] = per_class.get(ex["label"], 0) + 1
      subset.append((key, ex))
  tfds.dataset_builders.store_as_tfds_dataset(
      name=SUBSET.split("/")[0], config=SUBSET.split("/")[1], version="1.0.0",
      features=features, data_dir=data_dir, split_datasets={"train": subset})
