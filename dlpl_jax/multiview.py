"""The unlabeled loss over K weak and K strong views of each image (DebiasPL's ImageNet recipe).

Pure functions of arrays. The official ImageNet recipe draws two weak and two strong
views of every unlabeled image. Its pseudo-labels come from the MEAN of the weak logits
and from each weak view alone; each of these ``K + 1`` pseudo-labels is crossed with
each of the ``K`` strong views, and the ``(K + 1) K`` masked losses are averaged with
equal weights. The class marginal is updated once, from the softmax of the mean weak
logits. With ``K = 1`` the two pseudo-labels coincide and the loss is
:func:`dlpl_jax.pseudo_label.unlabeled_loss`'s.

References:
  Wang et al., DebiasPL, CVPR 2022, https://arxiv.org/abs/2201.01490
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dlpl_jax import _checks
from dlpl_jax import loss as loss_lib
from dlpl_jax import pseudo_label


def multiview_unlabeled_loss(
    weak_logits: ArrayLike,
    strong_logits: ArrayLike,
    marginal: ArrayLike,
    tau: float | ArrayLike = 0.4,
    threshold: float | ArrayLike = 0.95,
    momentum: float | ArrayLike = 0.999,
) -> pseudo_label.UnlabeledLoss:
  r"""DebiasPL's unlabeled loss over K weak and K strong views, the official combination.

  With :math:`\bar z_w = \frac1K \sum_k z_{w,k}` and the pseudo-label sources
  :math:`t \in \{\bar z_w, z_{w,1}, \dots, z_{w,K}\}`:

  .. math::
    q_t &= \mathrm{softmax}(\mathrm{sg}(t) - \tau \log \hat p_{t-1}), \quad
    \hat y_t = \arg\max q_t, \quad \mathrm{mask}_t = [\max q_t \ge \text{threshold}] \\
    \hat p_t &= m \hat p_{t-1} + (1-m)\,\mathrm{mean}_i\,\mathrm{softmax}(\mathrm{sg}(\bar z_w))_i \\
    L_u &= \frac{1}{(K+1) K} \sum_t \sum_{k=1}^{K} \frac1B \sum_i
           \mathrm{mask}_{t,i}\,\mathrm{CE}(z_{s,k,i} + \tau \log \hat p_t, \hat y_{t,i})

  Args:
    weak_logits: ``[K, B, C]`` logits of the K weak views (no gradient flows through
      them), ``K >= 1``, ``B >= 1``.
    strong_logits: ``[K, B, C]`` logits of the K strong views of the same images.
    marginal: ``[C]`` class marginal before this step.
    tau, threshold, momentum: as :func:`dlpl_jax.pseudo_label.unlabeled_loss`.

  Returns:
    An :class:`~dlpl_jax.pseudo_label.UnlabeledLoss` whose ``loss`` is the average
    above, ``marginal`` the updated marginal, and ``labels``, ``mask``, ``confidence``
    those of the mean-weak pseudo-label (the ones the official code reports).

  Raises:
    ValueError: wrong ranks or shapes, ``K = 0`` or ``B = 0``, and the bad values that
      :func:`dlpl_jax.pseudo_label.unlabeled_loss` refuses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from dlpl_jax.multiview import multiview_unlabeled_loss
    >>> weak = jnp.array([[[4.0, 0.0]], [[0.0, 0.0]]])      # K = 2 views, B = 1
    >>> strong = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    >>> out = multiview_unlabeled_loss(weak, strong, jnp.ones(2) / 2, tau=0.0,
    ...                                threshold=0.8)
    >>> print(out.labels, out.mask, float(out.loss.round(4)))
    [0] [1.] 0.5422
  """
  weak_logits, strong_logits = _checks.weak_strong(weak_logits, strong_logits, 3,
                                                   "[K, B, C]")
  if weak_logits.shape[0] == 0:
    raise ValueError(f"need at least one view, got weak_logits of shape {weak_logits.shape}")
  num_views = weak_logits.shape[0]
  weak = jax.lax.stop_gradient(weak_logits.astype(_checks.compute_dtype(weak_logits)))
  mean_weak = jnp.sum(weak, axis=0) / num_views
  sources = [mean_weak] + [weak[k] for k in range(num_views)]
  targets = []
  for source in sources:
    q = pseudo_label.debias(source, marginal, tau)
    targets.append((q,) + pseudo_label.hard_labels(q, threshold))
  new_marginal = pseudo_label.update_marginal(
      marginal, jax.nn.softmax(mean_weak, axis=-1), momentum)
  total = 0.0
  for _, labels, mask in targets:
    for k in range(num_views):
      per_example = loss_lib.adaptive_margin(strong_logits[k], labels, new_marginal, tau)
      total = total + jnp.mean(mask * per_example)
  # As unlabeled_loss: a NaN pseudo-label distribution must not read as a zero loss.
  ok = (jnp.all(jnp.isfinite(new_marginal))
        & jnp.isfinite(_checks.guard_tau(tau, new_marginal.dtype)))
  loss = total / (len(sources) * num_views) * jnp.where(ok, 1.0, jnp.nan)
  q, labels, mask = targets[0]
  return pseudo_label.UnlabeledLoss(loss, new_marginal, labels, mask, jnp.max(q, axis=-1))


def clip_fallback_loss(
    weak_logits: ArrayLike,
    strong_logits: ArrayLike,
    marginal: ArrayLike,
    new_marginal: ArrayLike,
    clip_labels: ArrayLike,
    clip_probs: ArrayLike,
    tau: float | ArrayLike = 0.4,
    threshold: float | ArrayLike = 0.8,
    clip_threshold: float | ArrayLike = 0.3,
) -> tuple[jax.Array, jax.Array]:
  r"""The official zero-shot recipe's CLIP fallback (``main_DebiasPL_ZeroShot.py``).

  Where NONE of the model's ``K + 1`` debiased pseudo-labels (the mean weak view's and
  each weak view's, as in :func:`multiview_unlabeled_loss`) passes the threshold and
  CLIP's probability of its own label is at least ``clip_threshold``, CLIP's label is
  the target of every strong view:

  .. math::
    f_i &= [p^{clip}_i \ge \text{clip\_threshold}] \prod_t (1 - \mathrm{mask}_{t,i}) \\
    L_{clip} &= \frac{1}{K B} \sum_k \sum_i f_i \,
                \mathrm{CE}(z_{s,k,i} + \tau \log \hat p_{new}, y^{clip}_i)

  and the recipe trains on ``(L_u + L_clip) / 2`` in place of ``L_u``.

  Args:
    weak_logits: ``[K, B, C]`` weak-view logits (no gradient).
    strong_logits: ``[K, B, C]`` strong-view logits.
    marginal: ``[C]`` the class marginal before this step (the pseudo-labels' debias).
    new_marginal: ``[C]`` after this step's update (the strong logits' margin shift).
    clip_labels: ``[B]`` CLIP's class per image; clip_probs ``[B]`` its probability.
    tau, threshold: DebiasPL's, as :func:`multiview_unlabeled_loss`.
    clip_threshold: CLIP's probability needed for the fallback (0.3 in the recipe).

  Returns:
    ``(loss, fallback)``: the scalar :math:`L_{clip}` and the ``[B]`` float mask ``f``.

  Examples:
    >>> import jax.numpy as jnp
    >>> weak = jnp.zeros((1, 2, 2))                 # K = 1, B = 2: no confident label
    >>> strong = jnp.array([[[0.0, 0.0], [1.0, 0.0]]])
    >>> loss, f = clip_fallback_loss(weak, strong, jnp.ones(2) / 2, jnp.ones(2) / 2,
    ...                              jnp.array([1, 0]), jnp.array([0.5, 0.2]), tau=0.0)
    >>> print(f, float(loss.round(4)))              # image 0 only: CE([0, 0], 1) / 2
    [1. 0.] 0.3466
  """
  weak_logits, strong_logits = _checks.weak_strong(weak_logits, strong_logits, 3,
                                                   "[K, B, C]")
  k, b = weak_logits.shape[:2]
  clip_labels = jnp.asarray(clip_labels)
  clip_probs = jnp.asarray(clip_probs)
  if clip_labels.shape != (b,) or clip_probs.shape != (b,):
    raise ValueError(f"clip_labels {clip_labels.shape} and clip_probs {clip_probs.shape} "
                     f"must be [B] = [{b}]")
  weak = jax.lax.stop_gradient(weak_logits.astype(_checks.compute_dtype(weak_logits)))
  sources = [jnp.sum(weak, axis=0) / k] + [weak[i] for i in range(k)]
  any_mask = jnp.zeros((b,), jnp.float32)
  for source in sources:
    _, mask = pseudo_label.hard_labels(pseudo_label.debias(source, marginal, tau), threshold)
    any_mask = jnp.maximum(any_mask, mask.astype(jnp.float32))
  fallback = (clip_probs >= clip_threshold).astype(jnp.float32) * (1.0 - any_mask)
  total = 0.0
  for i in range(k):
    per_example = loss_lib.adaptive_margin(strong_logits[i], clip_labels, new_marginal, tau)
    total = total + jnp.mean(fallback * per_example)
  return total / k, fallback
