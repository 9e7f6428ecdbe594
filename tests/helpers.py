"""Shared test helpers."""

from dlpl_jax import configs


def small_config(**overrides):
  """The base config with a small CNN and a 4 + 8 image batch, then ``overrides``."""
  c = configs.get_base_config()
  c.model = "cnn_small"
  c.batch_size = 4
  c.mu = 2
  for k, v in overrides.items():
    c[k] = v
  return c
