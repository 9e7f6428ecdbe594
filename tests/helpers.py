"""Shared test helpers."""

import textwrap

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


def hide_packages(modules, distributions=()) -> str:
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


def one_error_line(capsys) -> str:
  """The one line a command printed on stderr, which must start ``[dlpl_jax] error: ``."""
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("[dlpl_jax] error: "), captured.err
  return lines[0]
