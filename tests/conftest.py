"""Shared fixtures: a CPU-only JAX with the command line's XLA flag, the offline CIFAR-10,
the one tiny config and its data, the fake ImageNet, and helpers for commands (their
one-line errors, subprocesses, an install without the extras).

Tiers: ``tests/`` less ``tests/e2e`` is ``make test`` (unit and small integration tests);
``tests/e2e`` is ``make test-e2e`` (the command line on real CIFAR-10, notebooks, several
processes, the fake ImageNet end to end, the benchmark and study scripts).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from dlpl_jax import host  # noqa: E402  (before any test starts the JAX backend)

host.configure()  # the same XLA:CPU flag as the command line

REPO = pathlib.Path(__file__).resolve().parents[1]
if not os.environ.get("TFDS_DATA_DIR") and (REPO.parent / "shared/tensorflow_datasets").is_dir():
  os.environ["TFDS_DATA_DIR"] = str(REPO.parent / "shared/tensorflow_datasets")


# --- data -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cifar_dir() -> str:
  """The prepared CIFAR-10 (``$TFDS_DATA_DIR``); skips the test when it is not there."""
  d = os.environ.get("TFDS_DATA_DIR", "")
  if not (pathlib.Path(d) / "cifar10").is_dir():
    pytest.skip("CIFAR-10 for TFDS not found (set TFDS_DATA_DIR)")
  return d


@pytest.fixture(scope="session")
def cifar_test_images(cifar_dir):
  """The first 16 CIFAR-10 test images, uint8 ``[16, 32, 32, 3]``; skips without the data."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  tfds = pytest.importorskip("tensorflow_datasets")
  ds = tfds.load("cifar10", split="test[:16]", batch_size=-1, download=False,
                 data_dir=cifar_dir)
  images = tfds.as_numpy(ds)["image"]
  assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8
  return images


@pytest.fixture(scope="session")
def tiny_data():
  """Small learnable synthetic splits (10 classes, 2 labeled per class, 64 unlabeled, 64
  test images of 32x32)."""
  from dlpl_jax.data import in_memory  # pylint: disable=import-outside-toplevel
  return in_memory.synthetic(labeled_per_class=2, unlabeled=64, test=64)


@pytest.fixture
def mixed_images():
  """``mixed_images(n, seed=0) -> (images, labels)``: ``n`` smooth synthetic colour
  images (JPEG-like content), three of pure noise, one black, one white."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dlpl_jax.data import in_memory  # pylint: disable=import-outside-toplevel

  def make(n, seed=0):
    d = in_memory.synthetic(labeled_per_class=1, unlabeled=n, test=1, seed=seed)
    x = d.x_u.copy()
    x[:3] = np.random.default_rng(seed).integers(0, 256, x[:3].shape, dtype=np.uint8)
    x[3], x[4] = 0, 255
    return x, d.y_u
  return make


def _tiny_config(**overrides):
  from dlpl_jax import configs  # pylint: disable=import-outside-toplevel
  c = configs.get_base_config()
  values = {"model": "cnn_small", "batch_size": 4, "mu": 2, "total_steps": 4,
            "eval_every": 2, "log_every": 1, "checkpoint_every": 2, "eval_batch_size": 64,
            "progress": False, "threshold": 0.5, "marginal_momentum": 0.9, **overrides}
  c.update_from_flattened_dict(values)
  return c


@pytest.fixture
def tiny_config():
  """``tiny_config(**overrides)``: the base config with the small CNN, 4 labeled + 8
  unlabeled images a step, 4 steps (evaluation and checkpoint every 2, a log every
  step), threshold 0.5, marginal momentum 0.9, no progress bar; dotted keys
  (``"lt.enabled"``) override nested values."""
  return _tiny_config


FAKE_TRAIN = "fake_imagenet"
FAKE_SUBSET = "fake_imagenet_subset/1pct"


@pytest.fixture(scope="session")
def fake_imagenet(tmp_path_factory) -> str:
  """A TFDS data folder with a tiny ImageNet-shaped dataset: ``fake_imagenet`` (train
  120 images, validation 40, 10 classes, JPEG 48x56, the features of imagenet2012) and
  ``fake_imagenet_subset/1pct`` (5 training images per class). The ImageNet configs'
  ``:smoke`` variants read these names."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("fake_tfds"))
  rng = np.random.default_rng(0)
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=10),
      "file_name": tfds.features.Text()})

  def examples(n, prefix):
    labels = np.arange(n) % 10
    colours = np.linspace(30, 220, 10)[:, None] * np.array([1.0, 0.6, 0.3])
    img = colours[labels][:, None, None, :] + rng.normal(0, 15, (n, 48, 56, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return [(f"{prefix}{i}", {"image": im, "label": int(y),
                              "file_name": f"n{int(y):08d}_{prefix}{i}.JPEG"})
            for i, (im, y) in enumerate(zip(img, labels))]
  train = examples(120, "")
  tfds.dataset_builders.store_as_tfds_dataset(
      name=FAKE_TRAIN, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": train, "validation": examples(40, "val")})
  subset = [ex for ex in train if int(ex[0]) < 50]  # the first 5 of each class
  name, config = FAKE_SUBSET.split("/")
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, config=config, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": subset})
  return data_dir


@pytest.fixture
def imagenet_config():
  """``imagenet_config(name="imagenet_1pct", variant="smoke", **overrides)``: an ImageNet
  experiment config (dotted keys such as ``"imagenet.split"`` override nested values)."""
  def make(name="imagenet_1pct", variant="smoke", **overrides):
    from dlpl_jax import configs  # pylint: disable=import-outside-toplevel
    c = configs.load_config_file(str(REPO / "experiments" / f"{name}.py:{variant}"))
    c.update_from_flattened_dict(overrides)
    return c
  return make


@pytest.fixture
def tensorboard_tags():
  """``tensorboard_tags(logdir) -> {tag: sorted steps}`` over all event files; fails on a
  (tag, step) written twice."""
  def read(logdir) -> dict:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    seen = {}
    for name in os.listdir(logdir):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
        for v in event.summary.value:
          assert event.step not in seen.get(v.tag, []), (v.tag, event.step)
          seen.setdefault(v.tag, []).append(event.step)
    return {k: sorted(v) for k, v in seen.items()}
  return read


# --- commands ----------------------------------------------------------------------------


@pytest.fixture
def one_error_line(capsys):
  """``one_error_line()``: the one line a command printed on stderr, which must start
  ``[dlpl_jax] error: ``."""
  def read() -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[dlpl_jax] error: "), captured.err
    return lines[0]
  return read


def run_python(args: list[str], *, timeout: float = 600, env: dict | None = None,
               prelude: str = "") -> subprocess.CompletedProcess:
  """``python ARGS`` in the repository root with a CPU-only JAX (``prelude``: Python run
  first, e.g. :data:`HIDE_EXTRAS`, for ``-c`` code only)."""
  if prelude:
    assert args[0] == "-c", "a prelude goes with -c code"
    args = ["-c", prelude + textwrap.dedent(args[1])] + args[2:]
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                              **(env or {})})


@pytest.fixture
def python():
  """``python(args, timeout=600, env=None, prelude="")``: :func:`run_python`."""
  return run_python


EXTRAS = ("tensorflow", "tensorflow_datasets", "tensorboard", "matplotlib", "PIL",
          "ml_collections", "tqdm")
EXTRA_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "tensorboard",
                       "matplotlib", "pillow", "ml-collections", "tqdm")


def _hide_packages(modules, distributions=()) -> str:
  """Python source that, run first in a fresh interpreter, makes the top-level packages
  ``modules`` look not installed, as an absent package does: the path finder does not
  find them (``import`` raises ModuleNotFoundError, ``importlib.util.find_spec``
  answers None, so a library that probes for them carries on), and ``importlib.metadata``
  does not list the ``distributions`` (normalized names, e.g. ``tensorflow-cpu``)."""
  return textwrap.dedent(f"""
      import importlib.machinery as _m
      _hidden, _dists = {tuple(modules)!r}, {tuple(distributions)!r}
      _find, _dist = _m.PathFinder.find_spec, _m.PathFinder.find_distributions
      def _find_spec(name, path=None, target=None):
        return None if name.split(".")[0] in _hidden else _find(name, path, target)
      def _norm(d):
        return (d.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
      def _find_distributions(*args, **kwargs):
        return (d for d in _dist(*args, **kwargs) if _norm(d) not in _dists)
      _m.PathFinder.find_spec = staticmethod(_find_spec)
      _m.PathFinder.find_distributions = staticmethod(_find_distributions)
      """)


# What `pip install dlpl_jax` leaves out: run first, the extras look not installed.
HIDE_EXTRAS = _hide_packages(EXTRAS, EXTRA_DISTRIBUTIONS)


@pytest.fixture
def hide_extras() -> str:
  """:data:`HIDE_EXTRAS`, the prelude of a light install (for ``python(..., prelude=)``)."""
  return HIDE_EXTRAS


@pytest.fixture
def hide_packages():
  """``hide_packages(modules, distributions=())``: a prelude that makes those packages
  look not installed (see :data:`HIDE_EXTRAS`)."""
  return _hide_packages
