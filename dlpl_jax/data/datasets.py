"""What the project knows of the datasets its configs name: class counts, sizes and class
names. Standard library only (no TensorFlow, no NumPy)."""

from __future__ import annotations

import glob
import os

# Classes, training images per class and test images of the datasets the configs name.
KNOWN = {"cifar10": (10, 5000, 10000), "cifar100": (100, 500, 10000)}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def tfds_data_dir(data_dir: str | None = None) -> str:
  """The TFDS data directory, as TFDS itself resolves it: ``data_dir``, else
  ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def class_names(dataset: str, num_classes: int, data_dir: str | None = None) -> list[str]:
  """The names of a dataset's classes: CIFAR-10's; else the ``label.labels.txt`` of a
  prepared TFDS copy under :func:`tfds_data_dir` when it holds ``num_classes`` names;
  else ``"0", "1", ...``.

  >>> class_names("cifar10", 10)[:3]
  ['airplane', 'automobile', 'bird']
  >>> class_names("no_such_dataset", 3)
  ['0', '1', '2']
  """
  if dataset == "cifar10" and num_classes == 10:
    return list(CIFAR10_CLASSES)
  if dataset and "://" not in tfds_data_dir(data_dir):
    pattern = os.path.join(tfds_data_dir(data_dir), dataset, "*", "label.labels.txt")
    for path in sorted(glob.glob(pattern)):
      with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
      if len(names) == num_classes:
        return names
  return [str(i) for i in range(num_classes)]
