"""Per-example losses of DebiasPL: the adaptive margin loss and plain cross-entropy.

Pure functions of arrays. They return one value per example; the caller masks and
reduces (as in optax's losses).

References:
  Sohn et al., FixMatch, NeurIPS 2020, https://arxiv.org/abs/2001.07685
  Wang et al., Debiased Learning from Naturally Imbalanced Pseudo-Labels (DebiasPL),
  CVPR 2022, https://arxiv.org/abs/2201.01490
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dlpl_jax import _checks

# Entries of the class marginal are floored here before the log, so that a zero (or
# underflowed) entry gives log(1e-12) ~ -27.6 instead of -inf: no NaN or inf in the
# loss or its gradient. A true marginal estimated from softmax outputs never gets this
# small in practice (softmax probabilities are >= ~1e-38 and the EMA mixes them).
# The floor applies to entries in [0, 1e-12) only: a negative or non-finite entry is
# an error (ValueError when the marginal is concrete, NaN under jit), never floored.
MARGINAL_FLOOR = 1e-12


def log_marginal(marginal: ArrayLike) -> jax.Array:
  """log(max(marginal, MARGINAL_FLOOR)), computed in at least float32.

  Args:
    marginal: class marginal ``[C]``.

  Returns:
    ``[C]`` log-marginal: finite for every entry in ``[0, inf)``; NaN for a negative
    or non-finite entry (NaN, +-inf), so that a broken marginal cannot pass for a
    small one. This function does not raise; the loss functions refuse such a
    marginal with ``ValueError`` when its values are known (not traced).
  """
  marginal = jnp.asarray(marginal)
  marginal = marginal.astype(_checks.compute_dtype(marginal))
  valid = jnp.isfinite(marginal) & (marginal >= 0)
  return jnp.where(valid, jnp.log(jnp.maximum(marginal, MARGINAL_FLOOR)), jnp.nan)


def _check_labels(logits: jax.Array, labels) -> None:
  _checks.check_rank("labels", labels, 1, "[B] integer class ids")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(
        f"labels must be integer class ids, got dtype {jnp.result_type(labels)}")
  if jnp.shape(labels)[0] != logits.shape[0]:
    raise ValueError(
        f"labels of shape {jnp.shape(labels)} do not match logits of shape "
        f"{logits.shape}: batch sizes differ")
  if not isinstance(labels, jax.core.Tracer):
    lab = jax.device_get(labels)
    if lab.size and (lab.min() < 0 or lab.max() >= logits.shape[-1]):
      raise ValueError(
          f"labels must lie in [0, {logits.shape[-1]}), got values in "
          f"[{lab.min()}, {lab.max()}]")


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  r"""Per-example softmax cross-entropy with integer labels.

  .. math::
    \ell_i = \log \sum_c e^{z_{ic}} - z_{i y_i}

  Args:
    logits: ``[B, C]`` float logits (bfloat16 is computed in float32).
    labels: ``[B]`` integer class ids in ``[0, C)``. Out-of-range ids are refused
      with ``ValueError`` when the labels are concrete; under ``jit`` (where their
      values are unknown) they give NaN for that example, never a silent number.

  Returns:
    ``[B]`` float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.loss import cross_entropy
    >>> print(cross_entropy(jnp.array([[2.0, 1.0, 0.0]]), jnp.array([0])).round(4))
    [0.4076]
  """
  logits = jnp.asarray(logits)
  _checks.check_rank("logits", logits, 2, "[B, C]")
  _checks.check_float("logits", logits)
  _checks.check_batch("logits", logits)
  _check_labels(logits, labels)
  logits = logits.astype(_checks.compute_dtype(logits))
  labels = jnp.asarray(labels)
  num_classes = logits.shape[-1]
  valid = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, safe[:, None], axis=-1)[:, 0]
  return jnp.where(valid, log_z - picked, jnp.nan)


def adaptive_margin(
    logits: ArrayLike,
    labels: ArrayLike,
    marginal: ArrayLike,
    tau: float | ArrayLike = 0.4,
) -> jax.Array:
  r"""DebiasPL's adaptive margin loss, per example.

  Cross-entropy of the logits shifted by ``tau`` times the log class marginal, which
  enlarges the margin required of classes that are predicted rarely (small
  :math:`\hat p_c`) and shrinks it for classes that are over-predicted:

  .. math::
    \ell_i = \mathrm{CE}\big(z_i + \tau \log \hat p,\; y_i\big)
           = \log \sum_c e^{z_{ic} + \tau \log \hat p_c} - z_{i y_i} - \tau \log \hat p_{y_i}

  Marginal entries are floored at :data:`MARGINAL_FLOOR` (1e-12) before the log, so a
  zero entry never yields NaN/inf in the loss or its gradient. ``tau = 0`` (or a uniform
  marginal) gives plain cross-entropy.

  Bad values are refused with ``ValueError`` when they are known at trace time (Python
  numbers, concrete arrays, static shapes). Under ``jax.jit`` a traced ``tau`` or
  ``marginal`` cannot be checked; then a negative or non-finite ``tau``, or a negative
  or non-finite marginal entry, makes the loss of every example NaN (never a finite
  wrong number; a negative entry is not floored).

  Args:
    logits: ``[B, C]`` float logits, e.g. of the strong view (bfloat16 is computed in
      float32).
    labels: ``[B]`` integer targets in ``[0, C)`` (e.g. pseudo-labels).
    marginal: ``[C]`` class marginal :math:`\hat p` (finite, non-negative, sums to 1).
    tau: margin strength, finite, :math:`\tau \ge 0` (0.4 in the paper's scripts).

  Returns:
    ``[B]`` float32 per-example losses. Mask and average them yourself.

  Raises:
    ValueError: at trace time, for wrong ranks, an empty batch (``B = 0``), a
      class-count mismatch between logits and marginal, non-integer labels, a
      concrete ``tau`` that is negative or not finite, or a concrete marginal with a
      negative or non-finite entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.loss import adaptive_margin
    >>> logits = jnp.array([[2.0, 1.0, 0.0]])
    >>> labels = jnp.array([0])
    >>> marginal = jnp.array([0.5, 0.25, 0.25])
    >>> print(adaptive_margin(logits, labels, marginal, tau=1.0).round(4))
    [0.2244]

  References:
    Wang et al., Debiased Learning from Naturally Imbalanced Pseudo-Labels, CVPR 2022,
    https://arxiv.org/abs/2201.01490 (Eq. 4); Menon et al., logit adjustment,
    https://arxiv.org/abs/2007.07314. Used on FixMatch's strong view,
    https://arxiv.org/abs/2001.07685.
  """
  logits = jnp.asarray(logits)
  _checks.check_logits_marginal_tau(logits, marginal, tau)
  _check_labels(logits, labels)
  logits = logits.astype(_checks.compute_dtype(logits))
  tau = _checks.guard_tau(tau, logits.dtype)
  shifted = logits + tau * log_marginal(marginal).astype(logits.dtype)
  return cross_entropy(shifted, labels)


def cld_loss(
    strong_logits: ArrayLike,
    weak_logits: ArrayLike,
    temperature: float = 0.07,
) -> jax.Array:
  r"""Cross-level discrimination (CLD) loss, per example, as the official DebiasPL code.

  Instances of the strong view are discriminated against groups formed by the weak
  view, in probability space. With :math:`p^s = \mathrm{softmax}(z_s)` and
  :math:`p^w = \mathrm{softmax}(\mathrm{sg}(z_w))`:

  .. math::
    g_i = \arg\min_c p^w_{ic}, \qquad
    \mu_k = \frac{\sum_{i: g_i = k} p^w_i}{\max(1, |\{i: g_i = k\}|)}, \qquad
    \ell_i = \mathrm{CE}\big(p^s_i \mu^\top / T,\; g_i\big)

  The groups are the ARGMIN class of the weak probabilities, as the official code's
  centroid function computes them (``prob.argmin(dim=1)``); there are C groups, an empty
  group's centroid is zero. No gradient reaches the weak logits (nor the centroids); the
  gradient flows through :math:`p^s` only.

  Args:
    strong_logits: ``[B, C]`` logits of the strong view(s) (bfloat16 is computed in
      float32).
    weak_logits: ``[B, C]`` logits of the weak view(s) of the same images.
    temperature: :math:`T > 0` (0.07 in the official recipe).

  Returns:
    ``[B]`` float32 per-example losses; the official loss is their mean.

  Raises:
    ValueError: wrong ranks, different shapes, ``B = 0``, a temperature that is not a
      finite number ``> 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.loss import cld_loss
    >>> weak = jnp.array([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    >>> strong = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> print(cld_loss(strong, weak, temperature=1.0).round(4))
    [0.8944 0.8944]

  References:
    Wang, Liu, Yu, Unsupervised Feature Learning by Cross-Level Instance-Group
    Discrimination, CVPR 2021, https://arxiv.org/abs/2008.03813; used on the unlabeled
    images by DebiasPL's ImageNet recipe, https://arxiv.org/abs/2201.01490.
  """
  strong_logits = jnp.asarray(strong_logits)
  weak_logits = jnp.asarray(weak_logits)
  _checks.check_rank("strong_logits", strong_logits, 2, "[B, C]")
  _checks.check_rank("weak_logits", weak_logits, 2, "[B, C]")
  _checks.check_float("strong_logits", strong_logits)
  _checks.check_float("weak_logits", weak_logits)
  if strong_logits.shape != weak_logits.shape:
    raise ValueError(
        f"strong_logits {strong_logits.shape} and weak_logits {weak_logits.shape} must "
        "have the same shape [B, C]")
  _checks.check_batch("strong_logits", strong_logits)
  if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
      or not temperature > 0 or temperature == float("inf")):
    raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
  dtype = jnp.promote_types(_checks.compute_dtype(strong_logits),
                            _checks.compute_dtype(weak_logits))
  num_classes = strong_logits.shape[-1]
  prob_s = jax.nn.softmax(strong_logits.astype(dtype), axis=-1)
  prob_w = jax.nn.softmax(jax.lax.stop_gradient(weak_logits.astype(dtype)), axis=-1)
  groups = jnp.argmin(prob_w, axis=-1).astype(jnp.int32)
  members = jax.nn.one_hot(groups, num_classes, dtype=dtype)             # [B, K]
  counts = jnp.maximum(jnp.sum(members, axis=0), 1.0)                     # [K]
  centroids = (members.T @ prob_w) / counts[:, None]                      # [K, C]
  affinity = prob_s @ centroids.T                                         # [B, K]
  return cross_entropy(affinity / temperature, groups)
