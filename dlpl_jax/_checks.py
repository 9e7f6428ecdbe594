"""Trace-time input checks shared by the pure functions.

Everything here looks only at static information (ranks, shapes, dtypes) or at
concrete values (Python scalars, arrays that are not tracers), so it runs once while
tracing under ``jax.jit`` and costs nothing at run time. Values that are traced
(unknown until run time) cannot be checked here; the math functions turn the bad ones
into NaN instead (see :func:`guard_tau` and :func:`dlpl_jax.loss.log_marginal`).
"""

from __future__ import annotations

import math

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
  if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
    raise ValueError(f"expected a number, got {x!r}")
  return float(arr)


def check_rank(name: str, x, rank: int, what: str) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(
        f"{name} must have rank {rank} ({what}), got shape {jnp.shape(x)}")


def weak_strong(weak_logits, strong_logits, rank: int, what: str):
  """``(weak, strong)`` as arrays, both of rank ``rank`` and of one shape (``what``,
  e.g. "[B, C]"); ValueError otherwise."""
  weak_logits = jnp.asarray(weak_logits)
  strong_logits = jnp.asarray(strong_logits)
  check_rank("weak_logits", weak_logits, rank, what)
  check_rank("strong_logits", strong_logits, rank, what)
  if weak_logits.shape != strong_logits.shape:
    raise ValueError(
        f"weak_logits {weak_logits.shape} and strong_logits {strong_logits.shape} "
        f"must have the same shape {what}")
  return weak_logits, strong_logits


def check_float(name: str, x) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{name} must be floating point, got dtype {jnp.result_type(x)}")


def check_classes(logits_name: str, logits, marginal) -> None:
  num_classes = jnp.shape(logits)[-1]
  if jnp.shape(marginal) != (num_classes,):
    raise ValueError(
        f"marginal must have shape [C] = ({num_classes},) to match {logits_name} "
        f"of shape {jnp.shape(logits)}, got marginal of shape {jnp.shape(marginal)}")


def check_finite_non_negative(name: str, x) -> None:
  v = concrete_float(x)
  if v is not None and not 0.0 <= v < math.inf:  # refuses NaN, inf and negatives
    raise ValueError(f"{name} must be finite and >= 0, got {v}")


def check_batch(name: str, x) -> None:
  """Refuses an empty batch (``B = 0``, a static shape, so also under ``jit``)."""
  if jnp.shape(x)[0] == 0:
    raise ValueError(
        f"{name} must hold at least one example, got an empty batch of shape "
        f"{jnp.shape(x)} (a mean over B = 0 examples is NaN)")


def host_values(x) -> np.ndarray | None:
  """``x``'s values on the host when they are known here: None for a traced array, or
  for a multi-process global array (no host has all its values)."""
  if isinstance(x, jax.core.Tracer) or not getattr(x, "is_fully_addressable", True):
    return None
  return np.asarray(jax.device_get(x))


def check_marginal_values(marginal) -> None:
  """Refuses negative or non-finite entries of a concrete (not traced) marginal."""
  shown = host_values(marginal)  # printed in its own precision
  if shown is None:
    return
  m = shown.astype(np.float64)
  bad = np.flatnonzero(~np.isfinite(m) | (m < 0))
  if bad.size:
    c = int(bad[0])
    raise ValueError(
        f"marginal entries must be finite and >= 0, got {shown[c]!s} for class {c} "
        f"({bad.size} bad entr{'y' if bad.size == 1 else 'ies'})")


def guard_tau(tau, dtype) -> jax.Array:
  """``tau`` as a ``dtype`` scalar, refused unless finite and >= 0.

  A concrete ``tau`` is checked now (``ValueError``). A traced one cannot be; a
  negative or non-finite value then becomes NaN, so every output that depends on it
  is NaN rather than a plausible wrong number.
  """
  check_finite_non_negative("tau", tau)
  t = jnp.asarray(tau, dtype)
  if concrete_float(tau) is None:
    t = jnp.where(jnp.isfinite(t) & (t >= 0), t, jnp.nan)
  return t


def check_unit_interval(name: str, x) -> None:
  v = concrete_float(x)
  if v is not None and not 0.0 <= v <= 1.0:  # also refuses NaN
    raise ValueError(f"{name} must lie in [0, 1], got {v}")


def guard_unit_interval(name: str, x, dtype) -> jax.Array:
  """``x`` as a ``dtype`` scalar in ``[0, 1]``: a concrete value outside is refused now
  (``ValueError``); a traced one becomes NaN, so what depends on it is NaN rather than
  a plausible wrong number (a mask of all ones, a marginal off the simplex)."""
  check_unit_interval(name, x)
  v = jnp.asarray(x, dtype)
  if concrete_float(x) is None:
    v = jnp.where((v >= 0) & (v <= 1), v, jnp.nan)
  return v


# How far a concrete row of probabilities may be from summing to 1 (a bfloat16 softmax
# over 1000 classes is off by about 2e-3), and an entry from [0, 1].
PROB_SUM_TOL = 1e-2
PROB_ENTRY_TOL = 1e-6


def check_probabilities(name: str, probs) -> None:
  """Refuses a concrete (not traced) ``[B, C]`` array that is not rows of probabilities:
  entries finite and in [0, 1], each row summing to 1 (within :data:`PROB_SUM_TOL`).
  Logits passed as probabilities would otherwise give a mask of all ones or a marginal
  off the simplex, without an error."""
  p = host_values(probs)
  if p is None:
    return
  p = p.astype(np.float64)
  bad = ~np.isfinite(p).all(axis=-1)
  if bad.any():
    raise ValueError(f"{name} must be finite, got a non-finite entry in row "
                     f"{int(np.flatnonzero(bad)[0])}")
  sums = p.sum(axis=-1)
  worst = int(np.argmax(np.abs(sums - 1)))
  if (p.min() < -PROB_ENTRY_TOL or p.max() > 1 + PROB_ENTRY_TOL
      or abs(sums[worst] - 1) > PROB_SUM_TOL):
    raise ValueError(
        f"{name} must hold probabilities (entries in [0, 1], rows summing to 1, e.g. a "
        f"softmax), got entries in [{p.min():.4g}, {p.max():.4g}] and row {worst} "
        f"summing to {sums[worst]:.4g} (logits? apply jax.nn.softmax first)")


def check_finite(name: str, x) -> None:
  """Refuses a concrete (not traced) array with a non-finite entry, naming it."""
  values = host_values(x)
  if values is None:
    return
  bad = np.argwhere(~np.isfinite(values.astype(np.float64)))
  if bad.size:
    raise ValueError(f"{name} must be finite, got {values[tuple(bad[0])]} at index "
                     f"{tuple(int(i) for i in bad[0])} ({len(bad)} non-finite)")


def check_logits_marginal_tau(logits, marginal, tau) -> None:
  """Logits ``[B >= 1, C]`` floating, marginal ``[C]`` matching with finite entries
  >= 0 (when concrete), ``tau`` finite and >= 0 (when concrete)."""
  check_rank("logits", logits, 2, "[B, C]")
  check_float("logits", logits)
  check_batch("logits", logits)
  check_rank("marginal", marginal, 1, "[C]")
  check_classes("logits", logits, marginal)
  check_marginal_values(marginal)
  check_finite_non_negative("tau", tau)


def compute_dtype(x):
  """float32 for low-precision inputs (bfloat16/float16); float64 stays float64."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)
