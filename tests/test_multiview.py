"""The ImageNet recipe's loss math against NumPy: the unlabeled loss over K views
(dlpl_jax/multiview.py), the CLIP fallback (a hand-computed case) and the CLD loss
(dlpl_jax/loss.py's cld_loss, the official statements)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax import loss as loss_lib
from dlpl_jax import multiview
from dlpl_jax import pseudo_label
from tests import numpy_reference as ref


# --- K views ----------------------------------------------------------------------------


class TestMultiView:

  def test_two_views_equal_the_six_hand_computed_terms(self):
    rng = np.random.default_rng(2)
    weak = rng.normal(size=(2, 8, 5)) * 3
    strong = rng.normal(size=(2, 8, 5)) * 2
    marginal = np.array([0.4, 0.3, 0.1, 0.1, 0.1])
    out = multiview.multiview_unlabeled_loss(
        jnp.asarray(weak, jnp.float32), jnp.asarray(strong, jnp.float32),
        jnp.asarray(marginal, jnp.float32), tau=0.4, threshold=0.6, momentum=0.9)
    loss, qhat, (labels, mask) = ref.multiview(weak, strong, marginal, 0.4, 0.6, 0.9)
    assert 0 < mask.sum() < 8  # the threshold keeps some examples and drops others
    np.testing.assert_allclose(float(out.loss), loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.marginal), qhat, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.labels), labels)
    np.testing.assert_array_equal(np.asarray(out.mask), mask)

  def test_one_view_is_the_one_view_loss(self):
    rng = np.random.default_rng(3)
    w, s = (jnp.asarray(rng.normal(size=(1, 6, 4)) * 3, jnp.float32) for _ in range(2))
    m = jnp.full((4,), 0.25)
    a = multiview.multiview_unlabeled_loss(w, s, m, 0.4, 0.5, 0.9)
    b = pseudo_label.unlabeled_loss(w[0], s[0], m, 0.4, 0.5, 0.9)
    np.testing.assert_allclose(float(a.loss), float(b.loss), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(a.marginal), np.asarray(b.marginal))


# --- the CLIP fallback of the zero-shot recipe ------------------------------------------


class TestClipFallback:

  def test_against_hand_computed_case(self):
    """K = 2 views, B = 4, C = 3; the fallback takes image i iff CLIP's prob >= 0.3
    and none of the mean-weak / weak-1 / weak-2 debiased pseudo-labels passes 0.8."""
    rng = np.random.default_rng(0)
    weak = np.zeros((2, 4, 3), np.float32)
    weak[:, 0] = [6.0, 0.0, 0.0]          # confident in both views: masked, no fallback
    weak[0, 1] = [6.0, 0.0, 0.0]          # confident in view 1 only: no fallback
    weak[:, 2] = [0.5, 0.2, 0.0]          # never confident: fallback if CLIP >= 0.3
    weak[:, 3] = [0.1, 0.4, 0.0]          # never confident, CLIP prob too low
    strong = rng.normal(size=(2, 4, 3)).astype(np.float32)
    marginal = np.array([0.5, 0.3, 0.2], np.float32)
    new_marginal = np.array([0.45, 0.35, 0.2], np.float32)
    clip_labels = np.array([2, 2, 1, 0])
    clip_probs = np.array([0.9, 0.9, 0.3, 0.29], np.float32)
    tau, thr = 0.4, 0.8
    masks = []
    for src in [weak.mean(0), weak[0], weak[1]]:
      q = ref.softmax(src - tau * np.log(marginal))
      masks.append(q.max(-1) >= thr)
    want_f = (clip_probs >= 0.3) & ~np.any(masks, axis=0)
    np.testing.assert_array_equal(want_f, [False, False, True, False])
    want = np.mean([np.mean(want_f * ref.cross_entropy(strong[k] + tau * np.log(new_marginal),
                                            clip_labels)) for k in range(2)])
    loss, f = multiview.clip_fallback_loss(weak, strong, marginal, new_marginal,
                                           clip_labels, clip_probs, tau, thr, 0.3)
    np.testing.assert_array_equal(np.asarray(f), want_f.astype(np.float32))
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert want > 0

  def test_labels_of_another_batch_size_refused(self):
    z = jnp.zeros((1, 2, 3))
    with pytest.raises(ValueError, match=r"must be \[B\] = \[2\]"):
      multiview.clip_fallback_loss(z, z, jnp.ones(3) / 3, jnp.ones(3) / 3,
                                   jnp.zeros(3, jnp.int32), jnp.zeros(2))


# --- CLD --------------------------------------------------------------------------------


class TestCLD:

  def test_equals_the_official_statements(self):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 4)) * 2
    w = rng.normal(size=(6, 4)) * 2
    got = float(jnp.mean(loss_lib.cld_loss(jnp.asarray(s, jnp.float32),
                                           jnp.asarray(w, jnp.float32), 0.07)))
    np.testing.assert_allclose(got, ref.cld(ref.softmax(s), ref.softmax(w), 0.07), rtol=1e-5)

  def test_gradient_reaches_the_strong_logits_only(self):
    rng = np.random.default_rng(1)
    s, w = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(2))
    gs, gw = jax.grad(lambda a, b: jnp.mean(loss_lib.cld_loss(a, b)), argnums=(0, 1))(s, w)
    assert np.all(np.isfinite(gs)) and np.abs(gs).max() > 0
    assert np.abs(np.asarray(gw)).max() == 0

  def test_bad_inputs_refused(self):
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="same shape"):
      loss_lib.cld_loss(z, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="temperature"):
      loss_lib.cld_loss(z, z, temperature=0.0)
