"""Tests for dlpl_jax.loss: hand-computed values, float64 reference, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlpl_jax
from dlpl_jax import loss as loss_lib

LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, -1.0]], np.float32)
LABELS = np.array([0, 2], np.int32)
MARGINAL = np.array([0.5, 0.25, 0.25], np.float32)


def np_adaptive_margin(z, y, p, tau):
  """Independent float64 reference: CE(z + tau log p, y)."""
  s = np.asarray(z, np.float64) + tau * np.log(np.asarray(p, np.float64))
  lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
  return lse - s[np.arange(len(y)), y]


class TestCrossEntropy:

  def test_hand_computed(self):
    # log(e^2 + e^1 + e^0) - 2 = log(1 + e^-1 + e^-2) = 0.40760596
    # log(e^0 + e^3 + e^-1) - (-1) = 3 + log(1 + e^-3 + e^-4) + 1 = 4.06588
    out = loss_lib.cross_entropy(LOGITS, LABELS)
    np.testing.assert_allclose(out, [0.40760596, 4.0658840], rtol=1e-6)

  def test_out_of_range_labels_refused_eagerly_and_nan_under_jit(self):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
      loss_lib.cross_entropy(LOGITS, np.array([0, 3]))
    out = jax.jit(loss_lib.cross_entropy)(LOGITS, jnp.array([0, 3]))
    assert np.isfinite(out[0]) and np.isnan(out[1])

  def test_empty_batch_refused(self):
    # Through the package's re-export (dlpl_jax.cross_entropy is loss.cross_entropy).
    assert dlpl_jax.cross_entropy is loss_lib.cross_entropy
    with pytest.raises(ValueError, match="empty batch"):
      dlpl_jax.cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))


class TestAdaptiveMargin:

  def test_hand_computed_three_classes(self):
    # Row 0, tau=1: z + log p = [2 - ln2, 1 - ln4, -ln4] = [1.30685, -0.38629, -1.38629]
    # CE(label 0) = log(1 + e^-1.69315 + e^-2.69315) = log(1.18394 + 0.06767) = 0.22443.
    # Row 1: [0 - ln2, 3 - ln4, -1 - ln4] = [-0.69315, 1.61371, -2.38629]
    # CE(label 2) = logsumexp - (-2.38629); lse = 1.61371 + log(1 + e^-2.30686 + e^-4)
    #             = 1.61371 + log(1.11789) = 1.72516 -> 4.11145.
    out = loss_lib.adaptive_margin(LOGITS, LABELS, MARGINAL, tau=1.0)
    np.testing.assert_allclose(out, [0.22443, 4.11145], rtol=2e-5)
    # tau=0.4 on row 0: shift = 0.4*log p = [-0.27726, -0.55452, -0.55452]
    # s = [1.72274, 0.44548, -0.55452]; CE = log(1 + 0.27882 + 0.10257) = 0.323072
    out = loss_lib.adaptive_margin(LOGITS[:1], LABELS[:1], MARGINAL, tau=0.4)
    np.testing.assert_allclose(out, [0.323072], rtol=2e-5)

  def test_tau_zero_and_uniform_marginal_are_plain_ce(self):
    ce = loss_lib.cross_entropy(LOGITS, LABELS)
    np.testing.assert_array_equal(loss_lib.adaptive_margin(LOGITS, LABELS, MARGINAL, 0.0), ce)
    uniform = np.full(3, 1 / 3, np.float32)
    np.testing.assert_allclose(loss_lib.adaptive_margin(LOGITS, LABELS, uniform, 0.4), ce,
                               rtol=1e-6)

  @pytest.mark.parametrize("seed", range(3))
  def test_matches_float64_reference(self, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (16, 10)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    p = rng.dirichlet(np.ones(10) * 0.5).astype(np.float32)
    tau = float(rng.uniform(0, 2))
    np.testing.assert_allclose(loss_lib.adaptive_margin(z, y, p, tau),
                               np_adaptive_margin(z, y, p, tau), rtol=1e-5)

  def test_gradient_is_analytic(self):
    # d/dz CE(z + tau log p, y) = softmax(z + tau log p) - onehot(y)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5)).astype(np.float32)
    y = np.array([0, 1, 4, 2])
    p = rng.dirichlet(np.ones(5)).astype(np.float32)
    g = jax.grad(lambda z: loss_lib.adaptive_margin(z, y, p, 0.4).sum())(z)
    s = z.astype(np.float64) + 0.4 * np.log(p)
    soft = np.exp(s - s.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    np.testing.assert_allclose(g, soft - np.eye(5)[y], atol=1e-6)

  def test_zero_marginal_entry_is_finite_with_finite_gradient(self):
    p = jnp.array([1.0, 0.0, 0.0])
    val, (gz, gp) = jax.value_and_grad(
        lambda z, p: loss_lib.adaptive_margin(z, LABELS, p, 0.4).sum(), argnums=(0, 1))(
            jnp.asarray(LOGITS), p)
    assert np.isfinite(val) and np.isfinite(gz).all() and np.isfinite(gp).all()
    # The floor is what the docs say: 0.4 * log(1e-12) on classes 1 and 2.
    expected = np_adaptive_margin(LOGITS, LABELS, np.array([1.0, 1e-12, 1e-12]), 0.4)
    np.testing.assert_allclose(val, expected.sum(), rtol=1e-5)
    underflow = jnp.array([1.0, 1e-45, 0.0])  # denormal / zero
    assert np.isfinite(loss_lib.adaptive_margin(LOGITS, LABELS, underflow, 1.0)).all()

  def test_jit_equals_eager_and_vmap(self):
    f = jax.jit(loss_lib.adaptive_margin)
    np.testing.assert_allclose(f(LOGITS, LABELS, MARGINAL, 0.4),
                               loss_lib.adaptive_margin(LOGITS, LABELS, MARGINAL, 0.4),
                               rtol=1e-6)
    stacked = jax.vmap(loss_lib.adaptive_margin, in_axes=(0, 0, None, None))(
        np.stack([LOGITS, LOGITS * 2]), np.stack([LABELS, LABELS]), MARGINAL, 0.4)
    assert stacked.shape == (2, 2)
    np.testing.assert_allclose(stacked[0], f(LOGITS, LABELS, MARGINAL, 0.4), rtol=1e-6)
    # tau as a traced argument works too (no Python branching on its value).
    jax.jit(loss_lib.adaptive_margin)(LOGITS, LABELS, MARGINAL, jnp.float32(0.4))

  def test_bfloat16_logits_computed_in_float32(self):
    out = loss_lib.adaptive_margin(LOGITS.astype(jnp.bfloat16), LABELS, MARGINAL, 0.4)
    assert out.dtype == jnp.float32
    # bf16 inputs here are exact small integers, so the result equals the f32 one.
    np.testing.assert_allclose(out, loss_lib.adaptive_margin(LOGITS, LABELS, MARGINAL, 0.4),
                               rtol=1e-6)

  @pytest.mark.parametrize("args,match", [
      ((LOGITS[0], LABELS, MARGINAL), r"logits must have rank 2.*\(3,\)"),
      ((LOGITS, LABELS[:, None], MARGINAL), r"labels must have rank 1.*\(2, 1\)"),
      ((LOGITS, LABELS, MARGINAL[:2]), r"marginal must have shape \[C\] = \(3,\).*\(2,\)"),
      ((LOGITS, LABELS, MARGINAL[None]), r"marginal must have rank 1.*\(1, 3\)"),
      ((LOGITS, LABELS.astype(np.float32), MARGINAL), r"labels must be integer.*float32"),
      ((LOGITS, LABELS[:1], MARGINAL), r"batch sizes differ"),
      ((LOGITS.astype(np.int32), LABELS, MARGINAL), r"logits must be floating"),
  ])
  def test_bad_input_raises(self, args, match):
    with pytest.raises(ValueError, match=match):
      loss_lib.adaptive_margin(*args)
    with pytest.raises(ValueError, match=match):  # at trace time under jit, too
      jax.jit(loss_lib.adaptive_margin)(*args)

  @pytest.mark.parametrize("tau", [-0.1, float("nan"), float("inf"), -float("inf")])
  def test_bad_tau_raises_eagerly_and_is_nan_under_jit(self, tau):
    with pytest.raises(ValueError, match=r"tau must be finite and >= 0, got "):
      loss_lib.adaptive_margin(LOGITS, LABELS, MARGINAL, tau)
    # Traced, its value is unknown at trace time: every loss is NaN, never a number.
    out = jax.jit(loss_lib.adaptive_margin)(LOGITS, LABELS, MARGINAL, tau)
    assert np.isnan(out).all(), out

  @pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), -float("inf")])
  def test_bad_marginal_entry_raises_eagerly_and_is_nan_under_jit(self, bad):
    p = np.array([0.6, 0.4, bad], np.float32)
    with pytest.raises(ValueError, match=r"marginal entries must be finite and >= 0, "
                                         r"got .* for class 2 \(1 bad entry\)"):
      loss_lib.adaptive_margin(LOGITS, LABELS, p, 0.4)
    with pytest.raises(ValueError, match=r"marginal entries must be finite"):
      loss_lib.adaptive_margin(LOGITS, LABELS, jnp.asarray(p), 0.4)  # jax array too
    for tau in (0.4, 0.0):  # NaN even when tau = 0 multiplies the log-marginal
      out = jax.jit(loss_lib.adaptive_margin)(LOGITS, LABELS, p, tau)
      assert np.isnan(out).all(), (tau, out)
    # A negative entry is not floored: the floored marginal would give a finite loss.
    floored = np.array([0.6, 0.4, loss_lib.MARGINAL_FLOOR], np.float32)
    out = jax.jit(loss_lib.adaptive_margin)(LOGITS, LABELS, floored, 0.4)
    assert np.isfinite(out).all()

  def test_log_marginal_floors_zero_and_poisons_bad_entries(self):
    out = loss_lib.log_marginal(jnp.array([1.0, 0.0, -0.5, jnp.nan, jnp.inf]))
    np.testing.assert_allclose(out[:2], [0.0, np.log(1e-12)], rtol=1e-6)
    assert np.isnan(out[2:]).all(), out

  def test_empty_batch_raises_eagerly_and_under_jit(self):
    z, y = np.zeros((0, 3), np.float32), np.zeros((0,), np.int32)
    with pytest.raises(ValueError, match=r"logits must hold at least one .*\(0, 3\)"):
      loss_lib.adaptive_margin(z, y, MARGINAL, 0.4)
    with pytest.raises(ValueError, match=r"logits must hold at least one example"):
      jax.jit(loss_lib.adaptive_margin)(z, y, MARGINAL, 0.4)  # static shape: trace time
