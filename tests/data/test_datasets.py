"""dlpl_jax.data.datasets: what the project knows of its datasets (class counts and sizes,
class names), and TFDS's rule for the data directory."""

import os

import pytest

from dlpl_jax import configs
from dlpl_jax.data import datasets


def test_known_datasets():
  assert datasets.KNOWN["cifar10"] == (10, 5000, 10000)
  assert datasets.KNOWN["cifar100"] == (100, 500, 10000)
  assert configs.KNOWN_DATASETS is datasets.KNOWN  # what validate checks against
  c = configs.get_base_config()  # the default config trains a dataset it knows
  assert datasets.KNOWN[c.dataset][0] == c.num_classes
  assert len(datasets.CIFAR10_CLASSES) == 10


def test_tfds_data_dir_follows_tfds(tmp_path, monkeypatch):
  """The argument, else $TFDS_DATA_DIR, else ~/tensorflow_datasets, and nothing else."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
  assert datasets.tfds_data_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")
  assert datasets.tfds_data_dir(tmp_path / "arg") == str(tmp_path / "arg")  # a Path
  assert datasets.tfds_data_dir() == str(tmp_path / "env")
  assert datasets.tfds_data_dir("") == str(tmp_path / "env")
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert datasets.tfds_data_dir() == os.path.expanduser("~/tensorflow_datasets")


@pytest.fixture
def labeled_dir(tmp_path):
  """A data dir whose ``toy/1.0.0/label.labels.txt`` lists three class names."""
  version = tmp_path / "toy" / "1.0.0"
  version.mkdir(parents=True)
  (version / "label.labels.txt").write_text("apple\nbanana\n\ncherry\n")
  return str(tmp_path)


def test_class_names(labeled_dir, monkeypatch):
  assert datasets.class_names("cifar10", 10) == list(datasets.CIFAR10_CLASSES)
  # A prepared TFDS copy's label file, when it holds num_classes names (blank lines
  # skipped), from the argument or $TFDS_DATA_DIR.
  assert datasets.class_names("toy", 3, labeled_dir) == ["apple", "banana", "cherry"]
  monkeypatch.setenv("TFDS_DATA_DIR", labeled_dir)
  assert datasets.class_names("toy", 3) == ["apple", "banana", "cherry"]
  # Another class count, an unknown dataset, no dataset, a remote folder: the indices.
  assert datasets.class_names("toy", 4, labeled_dir) == ["0", "1", "2", "3"]
  assert datasets.class_names("other", 2, labeled_dir) == ["0", "1"]
  assert datasets.class_names("", 2, labeled_dir) == ["0", "1"]
  assert datasets.class_names("toy", 3, "gs://bucket/tfds") == ["0", "1", "2"]
  # CIFAR-10's names only for its 10 classes.
  assert datasets.class_names("cifar10", 3, labeled_dir) == ["0", "1", "2"]

