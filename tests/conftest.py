"""Shared test fixtures: where the offline CIFAR-10 lives, and a CPU-only JAX."""

import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from dlpl_jax import host  # noqa: E402  (before any test starts the JAX backend)

host.configure()  # the same data discovery and XLA:CPU flag as the command line

REPO = pathlib.Path(__file__).resolve().parents[1]


def tfds_data_dir() -> str | None:
  """TFDS_DATA_DIR, or ../shared/tensorflow_datasets beside the checkout, or None."""
  env = os.environ.get("TFDS_DATA_DIR")
  if env and pathlib.Path(env).is_dir():
    return env
  shared = REPO.parent / "shared" / "tensorflow_datasets"
  return str(shared) if shared.is_dir() else None


@pytest.fixture(scope="session")
def cifar_dir() -> str:
  """The prepared CIFAR-10 directory; skips the test when it is not available."""
  d = tfds_data_dir()
  if d is None or not (pathlib.Path(d) / "cifar10").is_dir():
    pytest.skip("CIFAR-10 for TFDS not found (set TFDS_DATA_DIR)")
  return d
