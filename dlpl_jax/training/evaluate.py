"""Evaluation: top-1 per class, predicted counts and class-mean features of the test set.

Two sources of test images: a padded, device-resident test set sliced on the device
(:func:`evaluate`, CIFAR) and host batches streamed per process (:func:`evaluate_batches`,
ImageNet). Either way every batch goes through one jitted :func:`eval_step`.
"""

from __future__ import annotations

import functools
from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training.state import TrainState


@functools.partial(jax.jit, static_argnames=("model", "batch", "mesh"))
def eval_step(variables, x_test: jax.Array, y_test: jax.Array, start, *, model: nn.Module,
              batch: int, mesh: Mesh | None = None) -> dict[str, jax.Array]:
  """Sums over one evaluation batch, sliced on the device from a padded test set.

  Args:
    variables: ``{"params", "batch_stats"}`` to evaluate.
    x_test: ``[N_pad, H, W, 3]`` uint8 test images, padded to a multiple of ``batch``.
    y_test: ``[N_pad]`` labels, -1 on padding.
    start: first index of this batch (traced).
    model, batch, mesh: static; the batch is sharded along the mesh's ``"data"`` axis.

  Returns:
    dict of ``correct [C]``, ``count [C]`` (per true class), ``predicted [C]`` counts,
    ``feature_sum [C, D]`` (penultimate features summed per true class).
  """
  x = mesh_lib.shard(jax.lax.dynamic_slice_in_dim(x_test, start, batch), mesh)
  y = mesh_lib.shard(jax.lax.dynamic_slice_in_dim(y_test, start, batch), mesh)
  logits, feats = model.apply(variables, x, train=False, return_features=True)
  valid = (y >= 0).astype(jnp.float32)
  true = jax.nn.one_hot(y, model.num_classes, dtype=jnp.float32) * valid[:, None]
  pred = jax.nn.one_hot(jnp.argmax(logits, -1), model.num_classes,
                        dtype=jnp.float32) * valid[:, None]
  return {"correct": jnp.sum(true * pred, 0), "count": jnp.sum(true, 0),
          "predicted": jnp.sum(pred, 0), "feature_sum": true.T @ feats.astype(jnp.float32)}


def eval_variables(state: TrainState, which: str = "ema") -> dict:
  """The variables to evaluate: the EMA of the params (``ema``, with the student's BN
  statistics) or the student itself (``student``, as the official ImageNet code)."""
  if which == "ema":
    return {"params": state.ema_params, "batch_stats": state.batch_stats}
  if which == "student":
    return {"params": state.params, "batch_stats": state.batch_stats}
  raise ValueError(f"eval params must be 'ema' or 'student', got {which!r}")


def pad_test_set(x: np.ndarray, y: np.ndarray, batch: int):
  """Pads the test set to a multiple of ``batch`` (label -1 marks padding)."""
  n_pad = (-len(y)) % batch
  if n_pad:
    x = np.concatenate([x, np.zeros((n_pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, -np.ones(n_pad, y.dtype)])
  return x, y


def evaluate(state: TrainState, x_test, y_test, *, model: nn.Module, batch: int,
             mesh: Mesh | None = None, params: str = "ema") -> dict:
  """Evaluation of :func:`eval_variables` on a padded, device-resident test set.

  Returns:
    dict with ``eval/top1`` (%), ``eval/per_class`` (``[C]`` %; NaN, written as null,
    for a class with no test image, e.g. with a small ``eval_examples``),
    ``eval/predicted`` (``[C]`` counts) and ``class_features`` (``[C, D]`` class-mean
    features).
  """
  variables = eval_variables(state, params)
  sums = [eval_step(variables, x_test, y_test, start, model=model, batch=batch, mesh=mesh)
          for start in range(0, x_test.shape[0], batch)]
  return summarize(sums)


def evaluate_batches(state: TrainState, batches: Iterable[dict], *, model: nn.Module,
                     batch: int, mesh: Mesh, params: str = "ema") -> dict:
  """As :func:`evaluate`, on streamed batches: each ``{image [b, H, W, 3], label [b]}``
  is this process's part (label -1 = padding) of a global batch of ``batch``."""
  variables = eval_variables(state, params)
  sums = []
  for b in batches:
    g = mesh_lib.from_processes({"image": b["image"],
                                 "label": np.asarray(b["label"], np.int32)}, mesh)
    sums.append(eval_step(variables, g["image"], g["label"], 0, model=model, batch=batch,
                          mesh=mesh))
  return summarize(sums)


def summarize(sums: list[dict]) -> dict:
  """The evaluation record from the per-batch sums of :func:`eval_step`."""
  total = sums[0]
  for s in sums[1:]:
    total = jax.tree_util.tree_map(jnp.add, total, s)
  total = jax.device_get(total)
  count = np.maximum(total["count"], 1)
  return {
      "eval/top1": float(100.0 * total["correct"].sum() / max(total["count"].sum(), 1)),
      "eval/per_class": np.where(total["count"] > 0, 100.0 * total["correct"] / count,
                                 np.nan).tolist(),
      "eval/predicted": total["predicted"].astype(int).tolist(),
      "class_features": total["feature_sum"] / count[:, None],
  }
