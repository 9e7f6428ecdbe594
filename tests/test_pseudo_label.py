"""Tests for dlpl_jax.pseudo_label: docs/METHOD.md's invariants, hand values, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlpl_jax
from dlpl_jax import pseudo_label as pl
from dlpl_jax.loss import cross_entropy

BAD_VALUES = [-0.1, float("nan"), float("inf"), -float("inf")]
Z = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, -1.0]], np.float32)
P = np.array([0.5, 0.25, 0.25], np.float32)


def np_softmax(s):
  s = np.asarray(s, np.float64)
  e = np.exp(s - s.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_fixmatch(weak, strong, threshold):
  """Plain FixMatch unlabeled loss (no marginal anywhere), float64."""
  q = np_softmax(weak)
  y = q.argmax(-1)
  mask = (q.max(-1) >= threshold).astype(np.float64)
  ls = np.log(np_softmax(strong))
  return y, mask, np.mean(mask * -ls[np.arange(len(y)), y])


def np_debiaspl(weak, strong, p, tau, threshold, m):
  """Independent float64 DebiasPL step in docs/METHOD.md's order."""
  q = np_softmax(np.asarray(weak, np.float64) - tau * np.log(p))
  y = q.argmax(-1)
  mask = (q.max(-1) >= threshold).astype(np.float64)
  p_new = m * np.asarray(p, np.float64) + (1 - m) * np_softmax(weak).mean(0)
  ls = np.log(np_softmax(np.asarray(strong, np.float64) + tau * np.log(p_new)))
  return y, mask, np.mean(mask * -ls[np.arange(len(y)), y]), p_new


class TestDebias:

  def test_hand_computed(self):
    # z - 1*log p = [2 + ln2, 1 + ln4, 0 + ln4] = [2.69315, 2.38629, 1.38629]
    # softmax: exp(0, -0.30686, -1.30686) = (1, 0.73576, 0.27067) / 2.00643
    q = pl.debias(jnp.array([[2.0, 1.0, 0.0]]), jnp.array([0.5, 0.25, 0.25]), tau=1.0)
    np.testing.assert_allclose(q, [[0.498398, 0.366702, 0.134901]], rtol=1e-5)

  def test_uniform_marginal_or_tau_zero_is_softmax(self):
    z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(pl.debias(z, np.full(4, 0.25), 0.4), np_softmax(z), rtol=1e-5)
    np.testing.assert_allclose(pl.debias(z, np.array([.7, .1, .1, .1]), 0.0), np_softmax(z),
                               rtol=1e-5)

  def test_no_gradient_through_pseudo_label(self):
    z = jnp.ones((2, 3))
    g = jax.grad(lambda z: pl.debias(z, jnp.array([.5, .3, .2]), .4)[:, 0].sum())(z)
    np.testing.assert_array_equal(g, 0.0)

  def test_rare_class_is_boosted(self):
    q = pl.debias(jnp.zeros((1, 2)), jnp.array([0.9, 0.1]), 0.4)
    assert q[0, 1] > q[0, 0]


class TestUpdateMarginal:

  def test_hand_computed(self):
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], np.float32)
    # batch mean [0.75, 0.25, 0]; 0.5 * 1/3 + 0.5 * mean
    out = pl.update_marginal(np.full(3, 1 / 3, np.float32), probs, momentum=0.5)
    np.testing.assert_allclose(out, [0.5416667, 0.2916667, 0.1666667], rtol=1e-6)

  def test_per_class_not_scalar_moves_toward_skewed_batch(self):
    # A scalar average of the probability matrix would keep the marginal uniform.
    uniform = np.full(4, 0.25, np.float32)
    skewed = np.tile(np.array([[0.85, 0.05, 0.05, 0.05]], np.float32), (32, 1))
    p = uniform
    for _ in range(50):
      p = pl.update_marginal(p, skewed, 0.9)
    assert p[0] > 0.8 and np.all(p[1:] < 0.07)
    assert np.abs(p - 0.25).max() > 0.5

  def test_stays_on_simplex_over_many_updates(self):
    c = 10
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)

    def step(p, key):
      logits = 4.0 * jax.random.normal(key, (64, c)) + jnp.arange(c) * 0.3
      return pl.update_marginal(p, jax.nn.softmax(logits), 0.999), None

    p, _ = jax.lax.scan(step, jnp.full((c,), 1 / c), keys)
    assert np.all(np.asarray(p) >= 0)
    np.testing.assert_allclose(np.sum(p), 1.0, atol=1e-5)

  def test_momentum_edges(self):
    probs = np.array([[0.2, 0.8]], np.float32)
    p = np.array([0.5, 0.5], np.float32)
    np.testing.assert_allclose(pl.update_marginal(p, probs, 1.0), p)
    np.testing.assert_allclose(pl.update_marginal(p, probs, 0.0), probs[0])

  def test_axis_name_averages_over_devices(self):
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32)  # 2 "devices", 1 each
    out = jax.vmap(lambda pr: pl.update_marginal(jnp.array([.5, .5]), pr, 0.0, "d"),
                   axis_name="d")(probs)
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.5, 0.5]])

  @pytest.mark.parametrize("m", [-0.1, 1.5, float("nan")])
  def test_bad_momentum(self, m):
    with pytest.raises(ValueError, match="momentum must lie in"):
      pl.update_marginal(np.full(2, .5), np.full((1, 2), .5), m)

  def test_shape_mismatch(self):
    with pytest.raises(ValueError, match=r"marginal must have shape \[C\] = \(2,\)"):
      pl.update_marginal(np.full(3, 1 / 3), np.full((1, 2), .5))
    with pytest.raises(ValueError, match=r"probs must have rank 2"):
      pl.update_marginal(np.full(2, .5), np.full((2,), .5))

  @pytest.mark.parametrize("probs", [
      [[2.0, -1.0]],            # logits, not probabilities
      [[0.9, 0.9]],             # rows summing to 1.8
      [[0.5, float("nan")]],
  ])
  def test_refuses_what_is_not_probabilities(self, probs):
    """Logits passed as probs would move the marginal off the simplex silently."""
    with pytest.raises(ValueError, match=r"probs must (hold probabilities|be finite)"):
      pl.update_marginal(np.full(2, .5), np.asarray(probs, np.float32), 0.5)

  @pytest.mark.parametrize("m", [-0.1, 3.0, float("nan")])
  def test_bad_traced_momentum_is_nan(self, m):
    new = jax.jit(pl.update_marginal)(np.full(2, .5, np.float32),
                                      np.full((1, 2), .5, np.float32), m)
    assert np.isnan(new).all(), new


class TestHardLabels:

  def test_threshold_is_greater_or_equal(self):
    labels, mask = pl.hard_labels(jnp.array([[0.25, 0.75], [0.74, 0.26]]), 0.75)
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_array_equal(mask, [1.0, 0.0])
    assert labels.dtype == jnp.int32 and mask.dtype == jnp.float32

  @pytest.mark.parametrize("t", [-0.01, 1.01])
  def test_bad_threshold(self, t):
    with pytest.raises(ValueError, match=f"threshold must lie in \\[0, 1\\], got {t}"):
      pl.hard_labels(jnp.array([[0.5, 0.5]]), t)

  def test_refuses_logits_as_probabilities(self):
    with pytest.raises(ValueError, match=r"probs must hold probabilities .* row 0 "
                                         r"summing to 3 \(logits\?"):
      pl.hard_labels(jnp.array([[1.0, 2.0], [0.5, 0.5]]), 0.95)

  @pytest.mark.parametrize("t", [-0.5, 1.5, float("nan")])
  def test_bad_traced_threshold_gives_a_nan_mask(self, t):
    """Under jit a threshold of 1.5 would mask everything and -0.5 nothing, silently."""
    labels, mask = jax.jit(pl.hard_labels)(jnp.array([[0.25, 0.75]]), t)
    np.testing.assert_array_equal(labels, [1])
    assert np.isnan(mask).all(), mask
    out = jax.jit(pl.unlabeled_loss)(Z, Z, P, 0.4, t, 0.9)
    assert np.isnan(out.loss), out

  def test_empty_batch_refused(self):
    # Through the package's re-export (dlpl_jax.hard_labels is pseudo_label.hard_labels).
    assert dlpl_jax.hard_labels is pl.hard_labels
    with pytest.raises(ValueError, match="empty batch"):
      dlpl_jax.hard_labels(jnp.zeros((0, 3)), 0.5)

  def test_tau_must_be_a_number(self):
    with pytest.raises(ValueError, match="expected a number, got None"):
      pl.debias(Z, P, None)


class TestUnlabeledLoss:
  rng = np.random.default_rng(0)
  WEAK = (rng.normal(size=(64, 10)) * 4).astype(np.float32)
  STRONG = (rng.normal(size=(64, 10)) * 3).astype(np.float32)
  SKEWED = rng.dirichlet(np.ones(10) * 0.3).astype(np.float32)

  def test_tau_zero_is_fixmatch_exactly(self):
    out = pl.unlabeled_loss(self.WEAK, self.STRONG, self.SKEWED, tau=0.0, threshold=0.7)
    y, mask, loss = np_fixmatch(self.WEAK, self.STRONG, 0.7)
    np.testing.assert_array_equal(out.labels, y)
    np.testing.assert_array_equal(out.mask, mask)
    assert 0 < mask.sum() < len(mask)  # the test exercises both masked and kept terms
    np.testing.assert_allclose(out.loss, loss, rtol=1e-5)

  def test_uniform_marginal_changes_nothing(self):
    uniform = np.full(10, 0.1, np.float32)
    a = pl.unlabeled_loss(self.WEAK, self.STRONG, uniform, tau=0.4, threshold=0.7,
                          momentum=1.0)  # p stays uniform for the margin, too
    b = pl.unlabeled_loss(self.WEAK, self.STRONG, uniform, tau=0.0, threshold=0.7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)

  @pytest.mark.parametrize("tau,m", [(0.4, 0.999), (1.0, 0.5), (2.0, 0.0)])
  def test_matches_float64_reference(self, tau, m):
    out = pl.unlabeled_loss(self.WEAK, self.STRONG, self.SKEWED, tau, 0.6, m)
    y, mask, loss, p_new = np_debiaspl(self.WEAK, self.STRONG, self.SKEWED, tau, 0.6, m)
    np.testing.assert_array_equal(out.labels, y)
    np.testing.assert_array_equal(out.mask, mask)
    np.testing.assert_allclose(out.loss, loss, rtol=1e-5)
    np.testing.assert_allclose(out.marginal, p_new, rtol=1e-5)

  def test_marginal_update_uses_raw_probabilities(self):
    out = pl.unlabeled_loss(self.WEAK, self.STRONG, self.SKEWED, tau=1.0, momentum=0.5)
    raw = 0.5 * self.SKEWED + 0.5 * np_softmax(self.WEAK).mean(0)
    deb = 0.5 * self.SKEWED + 0.5 * np_softmax(
        self.WEAK - np.log(self.SKEWED.astype(np.float64))).mean(0)
    assert np.abs(raw - deb).max() > 1e-2  # the two readings differ on this input
    np.testing.assert_allclose(out.marginal, raw, rtol=1e-5)

  def test_pre_update_marginal_for_label_post_update_for_margin(self):
    # Two classes, tau = 1, m = 0 (so the post-update marginal is the batch mean).
    # Pre-update p = [0.98, 0.02]: row 0's debiased scores are z - log p =
    # [2 + 0.020, 0 + 3.912] -> class 1. The batch mean softmax is
    # ([0.8808, 0.1192] + [0.0025, 0.9975]) / 2 = [0.4416, 0.5584]; with that p row 0
    # would score [2 + 0.817, 0 + 0.583] -> class 0. So the label shows which p was used.
    weak = np.array([[2.0, 0.0], [0.0, 6.0]], np.float32)
    strong = np.array([[0.5, 0.0], [0.0, 0.5]], np.float32)
    p = np.array([0.98, 0.02], np.float32)
    out = pl.unlabeled_loss(weak, strong, p, tau=1.0, threshold=0.0, momentum=0.0)
    np.testing.assert_array_equal(out.labels, [1, 1])      # from the PRE-update p
    p_new = np_softmax(weak).mean(0)
    np.testing.assert_allclose(out.marginal, p_new, rtol=1e-6)
    assert int(np.argmax(weak[0] - np.log(p_new))) == 0    # post-update p would differ
    # Margin with the POST-update p: mean CE(strong + log p_new, [1, 1]).
    expected = cross_entropy(strong + np.log(p_new).astype(np.float32), np.array([1, 1]))
    np.testing.assert_allclose(out.loss, np.mean(expected), rtol=1e-5)
    wrong = cross_entropy(strong + np.log(p), np.array([1, 1]))
    assert abs(float(np.mean(wrong)) - float(np.mean(expected))) > 0.1

  def test_gradients_analytic_and_only_through_strong(self):
    w = jnp.asarray(self.WEAK[:8])
    s = jnp.asarray(self.STRONG[:8])
    f = lambda w, s: pl.unlabeled_loss(w, s, self.SKEWED, 0.4, 0.5, 0.9).loss
    gw, gs = jax.grad(f, argnums=(0, 1))(w, s)
    np.testing.assert_array_equal(gw, 0.0)
    out = pl.unlabeled_loss(w, s, self.SKEWED, 0.4, 0.5, 0.9)
    shifted = np.asarray(s, np.float64) + 0.4 * np.log(np.asarray(out.marginal, np.float64))
    expected = (np.asarray(out.mask)[:, None] / 8) * (
        np_softmax(shifted) - np.eye(10)[np.asarray(out.labels)])
    np.testing.assert_allclose(gs, expected, atol=1e-6)

  def test_jit_equals_eager_and_bfloat16(self):
    args = (self.WEAK, self.STRONG, self.SKEWED, 0.4, 0.7, 0.99)
    eager = pl.unlabeled_loss(*args)
    jitted = jax.jit(pl.unlabeled_loss)(*args)
    for a, b in zip(eager, jitted):
      np.testing.assert_allclose(a, b, rtol=1e-6)
    bf = pl.unlabeled_loss(self.WEAK.astype(jnp.bfloat16), self.STRONG.astype(jnp.bfloat16),
                           *args[2:])
    assert bf.loss.dtype == jnp.float32 and bf.marginal.dtype == jnp.float32
    np.testing.assert_allclose(bf.loss, eager.loss, rtol=0.05)

  def test_zero_marginal_is_finite(self):
    p = np.zeros(10, np.float32)
    p[0] = 1.0
    f = lambda s: pl.unlabeled_loss(self.WEAK, s, p, 0.4, 0.5, 1.0).loss
    val, g = jax.value_and_grad(f)(jnp.asarray(self.STRONG))
    assert np.isfinite(val) and np.isfinite(g).all()

  def test_bad_shapes(self):
    with pytest.raises(ValueError, match=r"same shape"):
      pl.unlabeled_loss(self.WEAK, self.STRONG[:3], self.SKEWED)
    with pytest.raises(ValueError, match=r"marginal must have shape \[C\] = \(10,\)"):
      pl.unlabeled_loss(self.WEAK, self.STRONG, self.SKEWED[:5])


# ----------------------------------------------------------------------------------
# Refusals: tau finite and >= 0, marginal entries finite and >= 0, B >= 1. Refused
# with ValueError when known at trace time; under jit a traced bad value gives NaN.


def _with_bad_entry(bad):
  return np.array([0.6, 0.4, bad], np.float32)


class TestRefusals:

  @pytest.mark.parametrize("tau", BAD_VALUES)
  def test_bad_tau(self, tau):
    with pytest.raises(ValueError, match=r"tau must be finite and >= 0"):
      pl.debias(Z, P, tau)
    with pytest.raises(ValueError, match=r"tau must be finite and >= 0"):
      pl.unlabeled_loss(Z, Z, P, tau)
    assert np.isnan(jax.jit(pl.debias)(Z, P, tau)).all()
    out = jax.jit(pl.unlabeled_loss)(Z, Z, P, tau, 0.5, 0.9)
    assert np.isnan(out.loss) and np.isnan(out.confidence).all()
    np.testing.assert_array_equal(out.mask, [0.0, 0.0])
    assert np.isfinite(out.marginal).all()  # the EMA does not use tau
    grad = jax.jit(jax.grad(
        lambda s, t: pl.unlabeled_loss(Z, s, P, t, 0.5, 0.9).loss))(Z, tau)
    assert np.isnan(grad).all(), grad

  @pytest.mark.parametrize("bad", BAD_VALUES)
  def test_bad_marginal_entry(self, bad):
    p = _with_bad_entry(bad)
    match = r"marginal entries must be finite and >= 0, got .* for class 2"
    for f in (lambda: pl.debias(Z, p, 0.4),
              lambda: pl.update_marginal(p, np.full((2, 3), 1 / 3, np.float32), 0.9),
              lambda: pl.unlabeled_loss(Z, Z, p, 0.4)):
      with pytest.raises(ValueError, match=match):
        f()

  @pytest.mark.parametrize("bad", BAD_VALUES)
  def test_bad_marginal_entry_under_jit_is_nan_not_floored(self, bad):
    p = _with_bad_entry(bad)
    assert np.isnan(jax.jit(pl.debias)(Z, p, 0.4)).all()
    new = jax.jit(pl.update_marginal)(p, np.full((2, 3), 1 / 3, np.float32), 0.9)
    assert np.isfinite(new[:2]).all() and np.isnan(new[2]), new
    for tau in (0.4, 0.0):
      out = jax.jit(pl.unlabeled_loss)(Z, Z, p, tau, 0.5, 0.9)
      assert np.isnan(out.loss) and np.isnan(out.marginal[2]), (tau, out)
    grad = jax.jit(jax.grad(
        lambda s, p: pl.unlabeled_loss(Z, s, p, 0.4, 0.5, 0.9).loss))(Z, p)
    assert np.isnan(grad).all(), grad  # the gradient is poisoned too, not zero

  def test_nan_loss_although_every_example_is_masked(self):
    # Bad values make q NaN, so the mask is 0 everywhere; the loss is still NaN (a
    # plain mean(mask * loss) would read 0 under XLA).
    out = jax.jit(pl.unlabeled_loss)(Z, Z, P, float("inf"), 0.5, 0.9)
    np.testing.assert_array_equal(out.mask, [0.0, 0.0])
    assert np.isnan(out.loss)
    weak = Z.copy()
    weak[0, 0] = np.nan  # non-finite weak logits: NaN marginal, NaN loss
    out = jax.jit(pl.unlabeled_loss)(weak, Z, P, 0.4, 0.5, 0.9)
    assert np.isnan(out.loss) and np.isnan(out.marginal).all()
    with pytest.raises(ValueError, match=r"weak_logits must be finite, got nan at index "
                                         r"\(0, 0\)"):  # eagerly: named, not the marginal
      pl.unlabeled_loss(weak, Z, P, 0.4, 0.5, 0.9)

  def test_empty_batch(self):
    z0 = np.zeros((0, 3), np.float32)
    cases = [(pl.debias, (z0, P, 0.4), "logits"),
             (pl.update_marginal, (P, z0, 0.9), "probs"),
             (pl.unlabeled_loss, (z0, z0, P, 0.4), "weak_logits")]
    for f, args, name in cases:
      for g in (f, jax.jit(f)):  # B is a static shape: refused at trace time too
        with pytest.raises(ValueError, match=f"{name} must hold at least one example"):
          g(*args)

  def test_valid_edges_still_accepted(self):
    # tau = 0, zero marginal entries and a one-example batch are fine.
    p = np.array([1.0, 0.0, 0.0], np.float32)
    out = pl.unlabeled_loss(Z[:1], Z[:1], p, 0.0, 0.5, 0.9)
    assert np.isfinite(out.loss) and np.isfinite(out.marginal).all()
    jitted = jax.jit(pl.unlabeled_loss)(Z[:1], Z[:1], p, 0.0, 0.5, 0.9)
    np.testing.assert_allclose(jitted.loss, out.loss, rtol=1e-6)
