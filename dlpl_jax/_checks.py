"""Trace-time input checks shared by the pure functions.

Everything here looks only at static information (ranks, shapes, dtypes) or at
Python/concrete scalars, so it runs once while tracing under ``jax.jit`` and costs
nothing at run time. Values that are traced (unknown until run time) are not checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def concrete_float(x) -> float | None:
  """Returns ``x`` as a Python float when its value is known at trace time, else None."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(x)
  except Exception:  # pylint: disable=broad-except
    return None
  if arr.shape != ():
    raise ValueError(f"expected a scalar, got an array of shape {arr.shape}")
  return float(arr)


def check_rank(name: str, x, rank: int, what: str) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(
        f"{name} must have rank {rank} ({what}), got shape {jnp.shape(x)}")


def check_float(name: str, x) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{name} must be floating point, got dtype {jnp.result_type(x)}")


def check_classes(logits_name: str, logits, marginal) -> None:
  num_classes = jnp.shape(logits)[-1]
  if jnp.shape(marginal) != (num_classes,):
    raise ValueError(
        f"marginal must have shape [C] = ({num_classes},) to match {logits_name} "
        f"of shape {jnp.shape(logits)}, got marginal of shape {jnp.shape(marginal)}")


def check_non_negative(name: str, x) -> None:
  v = concrete_float(x)
  if v is not None and not v >= 0.0:  # also refuses NaN
    raise ValueError(f"{name} must be >= 0, got {v}")


def check_unit_interval(name: str, x) -> None:
  v = concrete_float(x)
  if v is not None and not 0.0 <= v <= 1.0:  # also refuses NaN
    raise ValueError(f"{name} must lie in [0, 1], got {v}")


def check_logits_marginal_tau(logits, marginal, tau) -> None:
  """Logits ``[B, C]`` floating, marginal ``[C]`` matching, ``tau >= 0``."""
  check_rank("logits", logits, 2, "[B, C]")
  check_float("logits", logits)
  check_rank("marginal", marginal, 1, "[C]")
  check_classes("logits", logits, marginal)
  check_non_negative("tau", tau)


def compute_dtype(x):
  """float32 for low-precision inputs (bfloat16/float16); float64 stays float64."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)
