"""Data parallelism: a 1-D device mesh with a ``"data"`` axis.

``jax.jit`` over the mesh: the state and the in-memory datasets are replicated, every
batch is sharded along ``"data"``. The step's formulas are written in the global view,
so batch-norm statistics, the losses and the class-marginal update are over the GLOBAL
batch: the same numbers on 1 or N devices, in 1 or N processes.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with axis ``"data"``."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh):
  """Places host arrays (identical on every process) replicated on the mesh."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree_util.tree_map(put, tree)


def shard(x, mesh: Mesh | None, axis: int = 0):
  """Inside a jitted function: ``x`` sharded along ``"data"`` on ``axis`` (no-op without
  a mesh)."""
  if mesh is None:
    return x
  spec = P(*([None] * axis), "data")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def from_processes(tree, mesh: Mesh, axes: dict[str, int] | None = None):
  """Global arrays, sharded along ``"data"``, from each process's part of a batch (a
  dict of host arrays); ``axes`` names the keys whose batch axis is not 0 (the views
  ``[K, b, ...]``: axis 1)."""
  axes = axes or {}

  def put(key, x):
    spec = P(*([None] * axes.get(key, 0)), "data")
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(x))
  return {k: put(k, v) for k, v in tree.items()}
