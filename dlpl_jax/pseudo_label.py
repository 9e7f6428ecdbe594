"""Pseudo-labels of FixMatch and DebiasPL, the class-marginal EMA, the unlabeled loss.

Pure functions of arrays. The order of one DebiasPL step (docs/METHOD.md):

1. ``q = debias(z_w, p̂, tau)`` with the marginal from BEFORE this step's update;
   ``ŷ, mask = hard_labels(q, threshold)``.
2. ``p̂ ← update_marginal(p̂, softmax(z_w), momentum)`` from the RAW weak probabilities.
3. ``L_u = mean(mask · adaptive_margin(z_s, ŷ, p̂_new, tau))``.

:func:`unlabeled_loss` does the three in this order; ``tau = 0`` is FixMatch exactly.

Bad inputs are refused with ``ValueError`` whenever they can be seen at trace time:
wrong ranks or class counts, an empty batch (``B = 0``: the batch mean would be
NaN), a ``tau`` that is negative or not finite, a marginal with a negative or
non-finite entry, a momentum or threshold outside ``[0, 1]``. Under ``jax.jit``,
values that are traced cannot be checked; a bad traced ``tau`` or marginal entry
then gives NaN in the outputs that depend on it (never a finite wrong number): a
negative marginal entry is not floored at :data:`dlpl_jax.loss.MARGINAL_FLOOR`.

References:
  Sohn et al., FixMatch, NeurIPS 2020, https://arxiv.org/abs/2001.07685
  Wang et al., DebiasPL, CVPR 2022, https://arxiv.org/abs/2201.01490
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dlpl_jax import _checks
from dlpl_jax import loss as loss_lib


def debias(logits: ArrayLike, marginal: ArrayLike, tau: float | ArrayLike = 0.4) -> jax.Array:
  r"""Debiased pseudo-label distribution (DebiasPL's counterfactual step).

  .. math::
    q = \mathrm{softmax}\big(\mathrm{sg}(z) - \tau \log \hat p\big)

  where sg is ``jax.lax.stop_gradient``: no gradient reaches the logits through the
  pseudo-label. The marginal is floored at :data:`dlpl_jax.loss.MARGINAL_FLOOR` before
  the log. ``tau = 0`` or a uniform marginal gives ``softmax(z)``.

  Args:
    logits: ``[B, C]`` logits of the weak view, ``B >= 1`` (bfloat16 is computed in
      float32).
    marginal: ``[C]`` class marginal :math:`\hat p`, the one from before this step's
      update; entries finite and ``>= 0``.
    tau: debiasing strength, finite, :math:`\tau \ge 0`.

  Returns:
    ``[B, C]`` float32 probabilities. Under ``jax.jit``, a traced ``tau`` that is
    negative or not finite, or a traced marginal with such an entry, makes every row
    NaN.

  Raises:
    ValueError: wrong ranks or class counts, ``B = 0``, a concrete ``tau`` that is
      negative or not finite, a concrete marginal with a negative or non-finite entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.pseudo_label import debias
    >>> q = debias(jnp.array([[2.0, 1.0, 0.0]]), jnp.array([0.5, 0.25, 0.25]), tau=1.0)
    >>> import numpy as np
    >>> print(np.asarray(q, np.float64).round(4))
    [[0.4984 0.3667 0.1349]]

  References:
    Wang et al., DebiasPL, https://arxiv.org/abs/2201.01490 (Eq. 3).
  """
  logits = jnp.asarray(logits)
  _checks.check_logits_marginal_tau(logits, marginal, tau)
  logits = jax.lax.stop_gradient(logits.astype(_checks.compute_dtype(logits)))
  log_p = jax.lax.stop_gradient(loss_lib.log_marginal(marginal)).astype(logits.dtype)
  tau = _checks.guard_tau(tau, logits.dtype)
  return jax.nn.softmax(logits - tau * log_p, axis=-1)


def update_marginal(
    marginal: ArrayLike,
    probs: ArrayLike,
    momentum: float | ArrayLike = 0.999,
    axis_name: str | None = None,
) -> jax.Array:
  r"""One EMA step of the class marginal from a batch of probabilities.

  .. math::
    \hat p \leftarrow m \hat p + (1 - m) \frac{1}{B} \sum_{i=1}^{B} p_i

  The mean is over the batch axis only, per class (averaging the whole matrix to a
  scalar would keep :math:`\hat p` uniform and make DebiasPL a silent no-op). Pass the
  RAW softmax of the weak logits, not the debiased probabilities. Under ``jax.jit``
  with a sharded batch the mean is already global; inside ``shard_map``/``pmap`` give
  ``axis_name`` to average over devices (omit it to keep one marginal per device, as
  the official PyTorch code does). No gradient flows through the result.

  Args:
    marginal: ``[C]`` current estimate, entries finite and ``>= 0``, summing to 1.
    probs: ``[B, C]`` probabilities (rows sum to 1), ``B >= 1``.
    momentum: EMA momentum :math:`m \in [0, 1]` (0.999 default; 0.99 in the official
      short runs).
    axis_name: optional mapped axis to average the batch mean over.

  Returns:
    ``[C]`` updated marginal, still a probability vector. Under ``jax.jit``, a traced
    marginal entry that is negative or not finite comes out NaN (it is not carried
    on, nor clipped, as a plausible number); a traced momentum outside ``[0, 1]``
    makes every entry NaN.

  Raises:
    ValueError: wrong ranks or class counts, ``B = 0`` (the batch mean would be NaN),
      a concrete momentum outside ``[0, 1]``, a concrete marginal with a negative or
      non-finite entry, concrete probs that are not rows of probabilities (entries in
      ``[0, 1]`` summing to 1 within 1e-2: logits passed by mistake).

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.pseudo_label import update_marginal
    >>> probs = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    >>> print(update_marginal(jnp.ones(3) / 3, probs, momentum=0.5).round(4))
    [0.5417 0.2917 0.1667]

  References:
    Wang et al., DebiasPL, https://arxiv.org/abs/2201.01490 (Eq. 2).
  """
  probs = jnp.asarray(probs)
  _checks.check_rank("probs", probs, 2, "[B, C]")
  _checks.check_float("probs", probs)
  _checks.check_batch("probs", probs)
  _checks.check_rank("marginal", marginal, 1, "[C]")
  _checks.check_classes("probs", probs, marginal)
  _checks.check_marginal_values(marginal)
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_probabilities("probs", probs)
  marginal = jnp.asarray(marginal)
  dtype = jnp.promote_types(_checks.compute_dtype(marginal), _checks.compute_dtype(probs))
  batch_mean = jnp.mean(jax.lax.stop_gradient(probs).astype(dtype), axis=0)
  if axis_name is not None:
    batch_mean = jax.lax.pmean(batch_mean, axis_name)
  # Written as p + (1 - m)(mean - p): the same EMA, but rounding errors in the sum
  # contract instead of compounding (m*p + (1-m)*mean in float32 drifts ~1e-5 off the
  # simplex over 2e4 steps at m = 0.999, because float32(0.999) + float32(0.001) != 1).
  m_value = _checks.concrete_float(momentum)
  if m_value is not None:  # 1 - m in double precision, then rounded once
    one_minus_m = jnp.asarray(1.0 - m_value, dtype)
  else:  # traced: NaN when outside [0, 1]
    one_minus_m = 1 - _checks.guard_unit_interval("momentum", momentum, dtype)
  marginal = marginal.astype(dtype)
  new = marginal + one_minus_m * (batch_mean - marginal)
  # A traced bad entry (negative, NaN, inf) becomes NaN instead of being carried on.
  new = jnp.where(jnp.isfinite(marginal) & (marginal >= 0), new, jnp.nan)
  return jax.lax.stop_gradient(new)


def hard_labels(probs: ArrayLike, threshold: float | ArrayLike = 0.95) -> tuple[jax.Array, jax.Array]:
  r"""Hard pseudo-labels and FixMatch's confidence mask.

  .. math::
    \hat y_i = \arg\max_c q_{ic}, \qquad
    \mathrm{mask}_i = [\max_c q_{ic} \ge \text{threshold}]

  Args:
    probs: ``[B, C]`` (debiased) pseudo-label probabilities.
    threshold: confidence threshold in ``[0, 1]`` (FixMatch: 0.95); greater-or-equal.

  Returns:
    ``(labels, mask)``: ``[B]`` int32 class ids and ``[B]`` float32 mask in {0, 1}
    (all NaN under ``jax.jit`` when a traced threshold is outside ``[0, 1]``).

  Raises:
    ValueError: wrong rank or dtype, ``B = 0``, a concrete threshold outside
      ``[0, 1]``, concrete probs that are not rows of probabilities (logits passed by
      mistake would pass any threshold).

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.pseudo_label import hard_labels
    >>> labels, mask = hard_labels(jnp.array([[0.1, 0.9], [0.95, 0.05]]), 0.95)
    >>> print(labels, mask)
    [1 0] [0. 1.]
  """
  probs = jnp.asarray(probs)
  _checks.check_rank("probs", probs, 2, "[B, C]")
  _checks.check_float("probs", probs)
  _checks.check_batch("probs", probs)
  _checks.check_probabilities("probs", probs)
  probs = jax.lax.stop_gradient(probs.astype(_checks.compute_dtype(probs)))
  threshold = _checks.guard_unit_interval("threshold", threshold, probs.dtype)
  labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  mask = (jnp.max(probs, axis=-1) >= threshold).astype(jnp.float32)
  return labels, jnp.where(jnp.isnan(threshold), jnp.nan, mask)


class UnlabeledLoss(NamedTuple):
  """What :func:`unlabeled_loss` returns.

  Attributes:
    loss: scalar float32, ``mean_i(mask_i * CE_i)`` over the unlabeled batch.
    marginal: ``[C]`` the updated class marginal (store it in the train state).
    labels: ``[B]`` int32 hard pseudo-labels.
    mask: ``[B]`` float32 confidence mask.
    confidence: ``[B]`` float32 max of the (debiased) pseudo-label distribution.
  """
  loss: jax.Array
  marginal: jax.Array
  labels: jax.Array
  mask: jax.Array
  confidence: jax.Array


def unlabeled_loss(
    weak_logits: ArrayLike,
    strong_logits: ArrayLike,
    marginal: ArrayLike,
    tau: float | ArrayLike = 0.4,
    threshold: float | ArrayLike = 0.95,
    momentum: float | ArrayLike = 0.999,
    axis_name: str | None = None,
) -> UnlabeledLoss:
  r"""The unlabeled loss of DebiasPL (``tau > 0``) or FixMatch (``tau = 0``).

  In docs/METHOD.md's order:

  .. math::
    q &= \mathrm{softmax}(\mathrm{sg}(z_w) - \tau \log \hat p_{t-1}), \quad
    \hat y = \arg\max q, \quad \mathrm{mask} = [\max q \ge \text{threshold}] \\
    \hat p_t &= m \hat p_{t-1} + (1-m)\,\mathrm{mean}_i\,\mathrm{softmax}(\mathrm{sg}(z_w))_i \\
    L_u &= \frac{1}{B} \sum_i \mathrm{mask}_i \,\mathrm{CE}(z_{s,i} + \tau \log \hat p_t, \hat y_i)

  With ``tau = 0`` the pseudo-labels, mask and loss are FixMatch's exactly; the
  marginal is still tracked (it then measures FixMatch's pseudo-label bias).

  Args:
    weak_logits: ``[B, C]`` logits of the weak views, ``B >= 1`` (no gradient flows
      through them).
    strong_logits: ``[B, C]`` logits of the strong views of the same images.
    marginal: ``[C]`` class marginal before this step, entries finite and ``>= 0``.
    tau: debiasing / margin strength, finite and ``>= 0`` (0 = FixMatch, 0.4 =
      DebiasPL default).
    threshold: confidence threshold in ``[0, 1]``.
    momentum: marginal EMA momentum in ``[0, 1]``.
    axis_name: optional mapped axis for the marginal's batch mean (see
      :func:`update_marginal`); not needed under ``jax.jit`` with sharded arrays.

  Returns:
    An :class:`UnlabeledLoss` ``(loss, marginal, labels, mask, confidence)``. Under
    ``jax.jit``, a traced ``tau`` that is negative or not finite, or a traced marginal
    with such an entry, makes ``loss`` and ``confidence`` NaN (the mask is then 0 and
    the labels are meaningless); a bad marginal entry also comes out NaN in
    ``marginal`` (see :func:`update_marginal`); a traced threshold or momentum outside
    ``[0, 1]``, or non-finite weak logits, make ``loss`` NaN.

  Raises:
    ValueError: wrong ranks or shapes, ``B = 0``, a concrete ``tau`` that is negative
      or not finite, a concrete marginal with a negative or non-finite entry, a
      concrete threshold or momentum outside ``[0, 1]``, concrete weak logits with a
      non-finite entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.pseudo_label import unlabeled_loss
    >>> weak = jnp.array([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> strong = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> out = unlabeled_loss(weak, strong, jnp.ones(3) / 3, tau=0.4, threshold=0.9)
    >>> print(out.labels, out.mask, out.loss.round(4))
    [0 1] [1. 0.] 0.2756

  References:
    Sohn et al., FixMatch, https://arxiv.org/abs/2001.07685 (Eq. 2);
    Wang et al., DebiasPL, https://arxiv.org/abs/2201.01490 (Algorithm 1).
  """
  weak_logits, strong_logits = _checks.weak_strong(weak_logits, strong_logits, 2, "[B, C]")
  _checks.check_batch("weak_logits", weak_logits)
  _checks.check_finite("weak_logits", weak_logits)
  q = debias(weak_logits, marginal, tau)
  labels, mask = hard_labels(q, threshold)
  raw = jax.nn.softmax(
      jax.lax.stop_gradient(weak_logits.astype(_checks.compute_dtype(weak_logits))), axis=-1)
  new_marginal = update_marginal(marginal, raw, momentum, axis_name=axis_name)
  per_example = loss_lib.adaptive_margin(strong_logits, labels, new_marginal, tau)
  # A NaN pseudo-label distribution (bad traced tau or marginal, non-finite weak
  # logits) masks every example, and XLA turns mask * NaN into 0: poison the loss
  # (and its gradient) explicitly so that it cannot read as a finite number.
  ok = (jnp.all(jnp.isfinite(new_marginal)) & jnp.all(jnp.isfinite(mask))
        & jnp.isfinite(_checks.guard_tau(tau, new_marginal.dtype)))
  loss = jnp.mean(mask * per_example) * jnp.where(ok, 1.0, jnp.nan)
  return UnlabeledLoss(loss, new_marginal, labels, mask, jnp.max(q, axis=-1))
