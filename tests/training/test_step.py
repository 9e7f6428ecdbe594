"""The train step (dlpl_jax/training/step.py) against NumPy.

Each loss term is a pure function, checked on its own: the supervised term, the unlabeled
term over one and K views, the CLIP fallback, CLD, the EMA teacher's logits, the EMA,
apply_update's bookkeeping, the metrics. A fake model whose logits are pixel values
checks the whole step against NumPy (as scenic's trainer tests do), and the step with
the options on against the terms computed by hand. With every option off, the real
model's jitted input stage and step are bit-identical to plain FixMatch / DebiasPL as
written before the options existed.
"""

import dataclasses
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlpl_jax import augment
from dlpl_jax import loss as loss_lib
from dlpl_jax import pseudo_label
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup
from dlpl_jax.training import state as state_lib
from dlpl_jax.training import step as step_lib
from dlpl_jax.training.inputs import step_key
from dlpl_jax.training.step import StepConfig
from tests import numpy_reference as ref

C = 4          # classes of the fake model
B, MU = 4, 2   # labeled images per step, unlabeled / labeled
BU = B * MU
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items()}


# --- the fake model ---------------------------------------------------------------------


class PixelLogits(nn.Module):
  """Logits = the first C pixel values times a scalar ``kernel`` (weight-decayed) plus a
  ``bias``. Train mode updates the BN-like statistic ``mean`` (half way to the batch mean
  of those pixel values) and leaves the logits alone; eval mode subtracts it."""
  num_classes: int = C

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    z = x.reshape(x.shape[0], -1)[:, :self.num_classes].astype(jnp.float32)
    kernel = self.param("kernel", nn.initializers.ones, ())
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (self.num_classes,))
    logits = z * kernel + bias
    if train:
      if not self.is_initializing():
        mean.value = 0.5 * mean.value + 0.5 * jnp.mean(z, 0)
    else:
      logits = logits - mean.value
    return (logits, z) if return_features else logits


MODEL = PixelLogits()
OPT = state_lib.OptimizerConfig(lr=LR, momentum=MOMENTUM, weight_decay=WD, total_steps=100)


def _cfg(**kw):
  return StepConfig(**{"num_classes": C, "batch_size": B, "mu": MU, "tau": 0.4,
                       "threshold": 0.5, "marginal_momentum": 0.9, "lambda_u": 1.0,
                       "ema_decay": 0.99, "seed": 0, **kw})


def _state(teacher=False, marginal=None):
  s = state_lib.create_train_state(MODEL, state_lib.make_optimizer(OPT), seed=0,
                                   image_shape=(1, 2, 3), teacher=teacher)
  s = s.replace(params={"kernel": jnp.float32(1.2), "bias": jnp.array([0.1, -0.2, 0.0, 0.3])},
                batch_stats={"mean": jnp.array([0.5, 0.0, -0.5, 1.0])})
  s = s.replace(ema_params=jax.tree_util.tree_map(lambda p: p - 0.05, s.params))
  if marginal is not None:
    s = s.replace(marginal=jnp.asarray(marginal, jnp.float32))
  if teacher:  # a teacher that differs from the student, so that using the wrong one shows
    s = s.replace(teacher_params={"kernel": jnp.float32(0.7),
                                  "bias": jnp.array([0.0, 1.0, 0.0, -1.0])},
                  teacher_batch_stats={"mean": jnp.array([0.2, -0.3, 0.1, 0.0])})
  return s


def _batch(k=1, seed=0, clip=False):
  """Views whose first C pixel values are the logits (scaled so that some weak views are
  confident and some not)."""
  rng = np.random.default_rng(seed)
  views = lambda *shape: (rng.normal(size=shape) * 2.5).astype(np.float32)
  batch = {"image_l": views(B, 1, 2, 3), "label_l": rng.integers(0, C, B).astype(np.int32),
           "weak": views(k, BU, 1, 2, 3), "strong": views(k, BU, 1, 2, 3),
           "label_u": rng.integers(0, C, BU).astype(np.int32)}
  if clip:
    batch["clip_label"] = rng.integers(0, C, BU).astype(np.int32)
    batch["clip_prob"] = rng.uniform(0, 1, BU).astype(np.float32)
  return batch


def _z(images):
  """The fake model's pixel logits of ``[..., 1, 2, 3]`` images."""
  return np.asarray(images, np.float64).reshape(*images.shape[:-3], -1)[..., :C]


_jit_step = jax.jit(step_lib.train_step, static_argnames=("model", "cfg"))


def _apply(variables, images, train):
  if train:
    return MODEL.apply(variables, images, train=True, mutable=["batch_stats"])
  return MODEL.apply(variables, images, train=False)


def _two_views(state, batch):
  """The student's float64 logits ``[2, BU, C]`` of the weak and of the strong views of
  a 2-view batch, from one train-mode pass over the step's concatenated images."""
  logits, _ = _apply({"params": state.params, "batch_stats": state.batch_stats},
                     jnp.concatenate([batch["image_l"], *batch["weak"], *batch["strong"]]),
                     True)
  z = np.asarray(logits, np.float64)
  return z[B:B + 2 * BU].reshape(2, BU, -1), z[B + 2 * BU:].reshape(2, BU, -1)


# --- each loss term on its own ----------------------------------------------------------


def test_supervised_term():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(B, C)) * 3
  labels = np.array([0, 2, 1, 3])
  got = step_lib.supervised_term(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(float(got), ref.cross_entropy(logits, labels).mean(), rtol=1e-6)


def test_unlabeled_term_one_view():
  rng = np.random.default_rng(1)
  w, s = rng.normal(size=(2, 1, BU, C)) * 3
  marginal = np.array([0.4, 0.3, 0.2, 0.1])
  cfg = _cfg()
  u = step_lib.unlabeled_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                              jnp.asarray(marginal, jnp.float32), cfg)
  loss, qhat, labels, mask, _ = ref.unlabeled(w[0], s[0], marginal, 0.4, 0.5, 0.9)
  assert 0 < mask.sum() < BU
  np.testing.assert_allclose(float(u.loss), loss, rtol=1e-5)
  np.testing.assert_allclose(u.marginal, qhat, rtol=1e-6)
  np.testing.assert_array_equal(u.labels, labels)
  np.testing.assert_array_equal(u.mask, mask)
  direct = pseudo_label.unlabeled_loss(w[0], s[0], marginal, 0.4, 0.5, 0.9)
  np.testing.assert_array_equal(u.loss, direct.loss)
  # FixMatch (tau = 0): no debias, no margin.
  fm = step_lib.unlabeled_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                               jnp.asarray(marginal, jnp.float32), _cfg(tau=0.0))
  np.testing.assert_allclose(float(fm.loss),
                             ref.unlabeled(w[0], s[0], marginal, 0.0, 0.5, 0.9)[0], rtol=1e-5)


def test_unlabeled_term_k_views():
  rng = np.random.default_rng(2)
  w, s = rng.normal(size=(2, 2, BU, C)) * 3
  marginal = np.array([0.4, 0.3, 0.2, 0.1])
  u = step_lib.unlabeled_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                              jnp.asarray(marginal, jnp.float32), _cfg(num_views=2))
  loss, qhat, (labels, mask) = ref.multiview(w, s, marginal, 0.4, 0.5, 0.9)
  np.testing.assert_allclose(float(u.loss), loss, rtol=1e-5)
  np.testing.assert_allclose(u.marginal, qhat, rtol=1e-6)
  np.testing.assert_array_equal(u.labels, labels)
  np.testing.assert_array_equal(u.mask, mask)


def test_clip_term_debiases_with_the_old_marginal_and_shifts_with_the_new():
  rng = np.random.default_rng(3)
  w, s = rng.normal(size=(2, 2, BU, C)) * 1.5
  marginal = np.array([0.4, 0.3, 0.2, 0.1])
  cfg = _cfg(num_views=2, clip_fallback=0.3, threshold=0.9)
  batch = _batch(2, clip=True)
  u = step_lib.unlabeled_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                              jnp.asarray(marginal, jnp.float32), cfg)
  loss, f = step_lib.clip_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                               jnp.asarray(marginal, jnp.float32), u, batch, cfg)
  want, want_f = ref.clip_fallback(w, s, marginal, np.asarray(u.marginal, np.float64),
                          batch["clip_label"], batch["clip_prob"], 0.4, 0.9, 0.3)
  assert 0 < want_f.sum() < BU
  np.testing.assert_array_equal(f, want_f)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_cld_term_one_view_takes_the_shifted_strong_logits():
  rng = np.random.default_rng(4)
  w, s = rng.normal(size=(2, 1, BU, C)) * 2
  cfg = _cfg(cld_weight=0.3)
  u = step_lib.unlabeled_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                              jnp.full((C,), 0.25), cfg)
  got = step_lib.cld_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32), u, cfg)
  shifted = s[0] + 0.4 * np.log(np.asarray(u.marginal, np.float64))
  want = ref.cld(ref.softmax(shifted), ref.softmax(w[0]), 0.07)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_cld_term_k_views_takes_the_view_means():
  rng = np.random.default_rng(5)
  w, s = rng.normal(size=(2, 2, BU, C)) * 2
  cfg = _cfg(num_views=2, cld_weight=0.3, cld_temperature=0.5)
  u = step_lib.unlabeled_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                              jnp.full((C,), 0.25), cfg)
  got = step_lib.cld_term(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32), u, cfg)
  want = ref.cld(ref.softmax(s.mean(0)), ref.softmax(w.mean(0)), 0.5)  # unshifted
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_total_loss():
  u = pseudo_label.UnlabeledLoss(jnp.float32(2.0), None, None, None, None)
  terms = step_lib.Terms(jnp.float32(1.0), u)
  assert float(step_lib.total_loss(terms, _cfg(lambda_u=0.5))) == 2.0
  with_cld = terms._replace(cld=jnp.float32(4.0))
  assert float(step_lib.total_loss(with_cld, _cfg(lambda_u=0.5, cld_weight=0.25))) == 3.0
  # The CLIP term is already inside the unlabeled loss (averaged with it).
  with_clip = terms._replace(clip=(jnp.float32(8.0), jnp.ones(2)))
  assert float(step_lib.total_loss(with_clip, _cfg(lambda_u=0.5))) == 2.0


def test_ema():
  old = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.float32(-1.0)}}
  new = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.float32(1.0)}}
  out = step_lib.ema(old, new, 0.75)
  np.testing.assert_allclose(out["a"], [1.5, 1.5])
  np.testing.assert_allclose(out["b"]["c"], -0.5)


def test_student_images_and_split_logits():
  """The student's one batch is [labeled, K weak, K strong] (view after view); with the
  teacher the weak views are not in it and the teacher's logits take their place."""
  batch = {"image_l": np.full((2, 1, 1, 3), 1.0), "weak": np.full((2, 3, 1, 1, 3), 2.0),
           "strong": np.full((2, 3, 1, 1, 3), 3.0)}
  batch["weak"][1] += 0.5
  batch["strong"][1] += 0.5
  images = np.asarray(step_lib.student_images(batch, _cfg(num_views=2)))[:, 0, 0, 0]
  np.testing.assert_array_equal(images, [1] * 2 + [2] * 3 + [2.5] * 3 + [3] * 3 + [3.5] * 3)
  images = np.asarray(step_lib.student_images(batch, _cfg(num_views=2, teacher=True)))
  np.testing.assert_array_equal(images[:, 0, 0, 0], [1] * 2 + [3] * 3 + [3.5] * 3)

  logits = jnp.arange(14 * 5, dtype=jnp.float32).reshape(14, 5)
  lab, weak, strong = step_lib.split_logits(logits, batch, None)
  np.testing.assert_array_equal(lab, logits[:2])
  np.testing.assert_array_equal(weak, logits[2:8].reshape(2, 3, 5))
  np.testing.assert_array_equal(strong, logits[8:].reshape(2, 3, 5))
  teacher = jnp.zeros((2, 3, 5))
  lab, weak, strong = step_lib.split_logits(logits[:8], batch, teacher)
  assert weak is teacher
  np.testing.assert_array_equal(strong, logits[2:8].reshape(2, 3, 5))


def test_teacher_logits_in_eval_mode_without_gradient():
  state = _state(teacher=True)
  weak = _batch(2)["weak"]
  got = step_lib.teacher_logits(state, jnp.asarray(weak), model=MODEL, cfg=_cfg(teacher=True))
  assert got.shape == (2, BU, C) and got.dtype == jnp.float32
  want = (_z(weak) * 0.7 + np.array([0.0, 1.0, 0.0, -1.0])
          - np.array([0.2, -0.3, 0.1, 0.0]))  # the teacher's params and BN statistics
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda p: jnp.sum(step_lib.teacher_logits(
      state.replace(teacher_params=p), jnp.asarray(weak), model=MODEL,
      cfg=_cfg(teacher=True))))(state.teacher_params)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(grad))


@pytest.mark.parametrize("teacher", [False, True])
def test_apply_update_bookkeeping(teacher):
  state = _state(teacher=teacher)
  cfg = _cfg(teacher=teacher, teacher_momentum=0.8)
  grads = {"kernel": jnp.float32(0.5), "bias": jnp.array([0.1, 0.0, -0.1, 0.2])}
  stats = {"mean": jnp.array([1.0, 1.0, 1.0, 1.0])}
  u = pseudo_label.UnlabeledLoss(jnp.float32(0.0), jnp.array([0.1, 0.2, 0.3, 0.4]),
                                 jnp.array([0, 1, 1, 3]), jnp.array([1.0, 0.0, 1.0, 1.0]),
                                 None)
  labels_u = jnp.array([0, 1, 2, 2])
  new = step_lib.apply_update(state, grads, stats, u, labels_u, cfg)
  assert int(new.step) == 1
  # SGD with coupled decay on the kernel, Nesterov momentum from a zero trace.
  lr0 = float(state_lib.learning_rate(OPT)(0))
  np.testing.assert_allclose(new.params["kernel"],
                             1.2 - lr0 * (1 + MOMENTUM) * (0.5 + WD * 1.2), rtol=1e-6)
  np.testing.assert_allclose(new.params["bias"], np.array([0.1, -0.2, 0.0, 0.3])
                             - lr0 * (1 + MOMENTUM) * np.asarray(grads["bias"]), rtol=1e-6)
  for k in ("kernel", "bias"):
    np.testing.assert_allclose(new.ema_params[k], 0.99 * np.asarray(state.ema_params[k])
                               + 0.01 * np.asarray(new.params[k]), rtol=1e-6)
  assert new.batch_stats is stats
  np.testing.assert_array_equal(new.marginal, u.marginal)
  # (true class, pseudo-label) pairs (0, 0) (1, 1) (2, 1) (2, 3); the second not confident.
  want = np.zeros((C, C))
  want_masked = np.zeros((C, C))
  for t, p, confident in zip([0, 1, 2, 2], [0, 1, 1, 3], [1, 0, 1, 1]):
    want[t, p] += 1
    want_masked[t, p] += confident
  np.testing.assert_array_equal(new.confusion, want)
  np.testing.assert_array_equal(new.confusion_masked, want_masked)
  if teacher:
    for k in ("kernel", "bias"):
      np.testing.assert_allclose(new.teacher_params[k], 0.8 * np.asarray(state.teacher_params[k])
                                 + 0.2 * np.asarray(new.params[k]), rtol=1e-6)
    np.testing.assert_allclose(new.teacher_batch_stats["mean"],
                               0.8 * np.array([0.2, -0.3, 0.1, 0.0]) + 0.2, rtol=1e-6)
  # The counters add up over steps.
  again = step_lib.apply_update(new, grads, stats, u, labels_u, cfg)
  np.testing.assert_array_equal(again.confusion, 2 * want)


def test_step_metrics():
  u = pseudo_label.UnlabeledLoss(jnp.float32(2.0), None, None, jnp.array([1.0, 0.0, 0.0, 1.0]),
                                 None)
  grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
  params = {"a": jnp.array([6.0]), "b": jnp.array([8.0])}
  m = step_lib.step_metrics(step_lib.Terms(jnp.float32(1.0), u), grads, params, _cfg())
  assert {k: float(v) for k, v in m.items()} == {
      "train/loss": 3.0, "train/loss_x": 1.0, "train/loss_u": 2.0, "train/mask_rate": 0.5,
      "train/grad_norm": 5.0, "train/param_norm": 10.0}
  terms = step_lib.Terms(jnp.float32(1.0), u, jnp.float32(4.0),
                         (jnp.float32(0.5), jnp.array([1.0, 0.0, 0.0, 0.0])))
  m = step_lib.step_metrics(terms, grads, params, _cfg(cld_weight=0.5))
  assert float(m["train/loss"]) == 5.0 and float(m["train/loss_cld"]) == 4.0
  assert float(m["train/loss_clip"]) == 0.5 and float(m["train/clip_rate"]) == 0.25


def test_a_batch_or_state_that_does_not_fit_is_refused():
  with pytest.raises(ValueError, match="the step's teacher = False but the state is a "
                                       "TeacherTrainState"):
    step_lib.train_step(_state(teacher=True), _batch(), model=MODEL, cfg=_cfg())
  with pytest.raises(ValueError, match="the step's teacher = True but the state is a "
                                       "TrainState"):
    step_lib.train_step(_state(), _batch(), model=MODEL, cfg=_cfg(teacher=True))
  with pytest.raises(ValueError, match=r"batch\['weak'\] must be \[K = 2, Bu, H, W, 3\]"):
    step_lib.train_step(_state(), _batch(1), model=MODEL, cfg=_cfg(num_views=2))
  with pytest.raises(ValueError, match="clip_fallback > 0 needs clip_label and clip_prob"):
    step_lib.train_step(_state(), _batch(1), model=MODEL, cfg=_cfg(clip_fallback=0.3))


# --- the whole step with the fake model -------------------------------------------------


def test_step_bookkeeping_against_numpy():
  """Every output of one step, by hand: the losses and mask, the gradients of the pixel
  model, SGD, the EMA, the BN statistic over the student's whole batch, the marginal and
  the pseudo-label counters."""
  marginal = np.array([0.4, 0.3, 0.2, 0.1])
  state, batch, cfg = _state(marginal=marginal), _batch(), _cfg()
  new, m = _jit_step(state, batch, model=MODEL, cfg=cfg)

  k, bias = 1.2, np.array([0.1, -0.2, 0.0, 0.3])
  z_l, z_w, z_s = _z(batch["image_l"]), _z(batch["weak"][0]), _z(batch["strong"][0])
  loss_x = ref.cross_entropy(z_l * k + bias, batch["label_l"]).mean()
  loss_u, qhat, labels, mask, d_s = ref.unlabeled(z_w * k + bias, z_s * k + bias, marginal,
                                                  0.4, 0.5, 0.9)
  assert 0 < mask.sum() < BU  # some pseudo-labels pass the threshold, some do not
  np.testing.assert_allclose(float(m["train/loss_x"]), loss_x, rtol=1e-5)
  np.testing.assert_allclose(float(m["train/loss_u"]), loss_u, rtol=1e-5)
  np.testing.assert_allclose(float(m["train/loss"]), loss_x + loss_u, rtol=1e-5)
  assert float(m["train/mask_rate"]) == mask.mean()
  assert set(m) == {"train/loss", "train/loss_x", "train/loss_u", "train/mask_rate",
                    "train/grad_norm", "train/param_norm"}

  # Gradients: the labeled and strong rows only (the weak logits carry none).
  d_l = (ref.softmax(z_l * k + bias) - ref.onehot(batch["label_l"], C)) / B
  g_bias = d_l.sum(0) + d_s.sum(0)
  g_k = (d_l * z_l).sum() + (d_s * z_s).sum()
  np.testing.assert_allclose(float(m["train/grad_norm"]),
                             np.sqrt(g_k ** 2 + (g_bias ** 2).sum()), rtol=1e-5)
  new_k = k - LR * (1 + MOMENTUM) * (g_k + WD * k)   # decay on the kernel only
  new_bias = bias - LR * (1 + MOMENTUM) * g_bias
  np.testing.assert_allclose(new.params["kernel"], new_k, rtol=1e-5)
  np.testing.assert_allclose(new.params["bias"], new_bias, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(m["train/param_norm"]),
                             np.sqrt(new_k ** 2 + (new_bias ** 2).sum()), rtol=1e-5)
  np.testing.assert_allclose(new.ema_params["bias"],
                             0.99 * (bias - 0.05) + 0.01 * new_bias, rtol=1e-5, atol=1e-7)
  # The student's BN statistics over [labeled, weak, strong], all in train mode.
  batch_mean = np.concatenate([z_l, z_w, z_s]).mean(0)
  np.testing.assert_allclose(new.batch_stats["mean"],
                             0.5 * np.array([0.5, 0.0, -0.5, 1.0]) + 0.5 * batch_mean,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.marginal, qhat, rtol=1e-6)
  onehot_t, onehot_p = ref.onehot(batch["label_u"], C), ref.onehot(labels, C)
  np.testing.assert_array_equal(new.confusion, onehot_t.T @ onehot_p)
  np.testing.assert_array_equal(new.confusion_masked, (onehot_t * mask[:, None]).T @ onehot_p)
  assert int(new.step) == 1 and type(new) is state_lib.TrainState


def test_teacher_gives_the_weak_logits_and_follows_the_student():
  cfg = _cfg(teacher=True, teacher_momentum=0.9)
  state, batch = _state(teacher=True), _batch()
  new, m = _jit_step(state, batch, model=MODEL, cfg=cfg)
  # By hand: the teacher in eval mode on the weak view, the student in train mode on
  # [labeled, strong] only.
  t_logits = _apply({"params": state.teacher_params,
                     "batch_stats": state.teacher_batch_stats}, batch["weak"][0], False)
  s_logits, upd = _apply({"params": state.params, "batch_stats": state.batch_stats},
                         jnp.concatenate([batch["image_l"], batch["strong"][0]]), True)
  u = pseudo_label.unlabeled_loss(t_logits, s_logits[B:], state.marginal, cfg.tau,
                                  cfg.threshold, cfg.marginal_momentum)
  np.testing.assert_allclose(float(m["train/loss_u"]), float(u.loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new.marginal), np.asarray(u.marginal), rtol=1e-6)
  for k, v in _flat(upd["batch_stats"]).items():
    np.testing.assert_allclose(_flat(new.batch_stats)[k], v, rtol=1e-5, atol=1e-7)
  # The EMA of params AND BN statistics after one step: 0.9 * teacher + 0.1 * student'.
  for name, old_t, new_t, student in (
      ("params", state.teacher_params, new.teacher_params, new.params),
      ("batch_stats", state.teacher_batch_stats, new.teacher_batch_stats,
       new.batch_stats)):
    old_t, new_t, student = _flat(old_t), _flat(new_t), _flat(student)
    assert set(new_t) == set(student), name
    for k in student:
      want = 0.9 * old_t[k].astype(np.float64) + 0.1 * student[k].astype(np.float64)
      np.testing.assert_allclose(new_t[k], want, rtol=1e-6, atol=1e-7, err_msg=k)


def test_two_views_and_cld_in_the_step():
  cfg = _cfg(num_views=2, cld_weight=0.3)
  state, batch = _state(), _batch(2)
  new, m = _jit_step(state, batch, model=MODEL, cfg=cfg)
  w, s = _two_views(state, batch)
  loss_u, qhat, _ = ref.multiview(w, s, np.full(C, 1 / C), cfg.tau, cfg.threshold,
                                  cfg.marginal_momentum)
  np.testing.assert_allclose(float(m["train/loss_u"]), loss_u, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(new.marginal), qhat, rtol=1e-5)
  # CLD on the mean strong logits (unshifted) against the mean weak logits.
  cld = ref.cld(ref.softmax(s.mean(0)), ref.softmax(w.mean(0)), 0.07)
  np.testing.assert_allclose(float(m["train/loss_cld"]), cld, rtol=1e-4)
  total = float(m["train/loss_x"]) + cfg.lambda_u * loss_u + 0.3 * cld
  np.testing.assert_allclose(float(m["train/loss"]), total, rtol=1e-4)


def test_clip_fallback_in_the_step_averages_the_unlabeled_losses():
  cfg = _cfg(num_views=2, clip_fallback=0.3, threshold=0.95)
  state, batch = _state(), _batch(2, seed=3, clip=True)
  _, m = _jit_step(state, batch, model=MODEL, cfg=cfg)
  w, s = _two_views(state, batch)
  marginal = np.full(C, 1 / C)
  loss_u, qhat, _ = ref.multiview(w, s, marginal, cfg.tau, cfg.threshold,
                                  cfg.marginal_momentum)
  loss_clip, f = ref.clip_fallback(w, s, marginal, qhat, batch["clip_label"], batch["clip_prob"],
                          cfg.tau, cfg.threshold, 0.3)
  assert 0 < f.sum() < BU
  np.testing.assert_allclose(float(m["train/loss_clip"]), loss_clip, rtol=1e-4)
  np.testing.assert_allclose(float(m["train/clip_rate"]), f.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(m["train/loss_u"]), (loss_u + loss_clip) / 2, rtol=1e-4)
  np.testing.assert_allclose(float(m["train/loss"]),
                             float(m["train/loss_x"]) + (loss_u + loss_clip) / 2, rtol=1e-4)


# --- the real model: the jitted input stage and step ------------------------------------


def _real_step(tiny_config, tiny_data, **overrides):
  """The loop's own program: the tiny config's input stage and step on the mesh (its
  compiled program is shared with the loop's tests)."""
  spec = setup.read(tiny_config(**overrides))
  mesh = mesh_lib.make_mesh()
  return spec, mesh, setup.make_input(spec, mesh, tiny_data)


def test_one_step_bookkeeping(tiny_config, tiny_data):
  spec, mesh, inp = _real_step(tiny_config, tiny_data)
  state = setup.new_state(spec, mesh)
  new, m = inp.step(state)
  bu = spec.step.batch_size * spec.step.mu
  assert int(new.step) == 1
  # Every unlabeled image of the batch lands in the confusion matrix exactly once.
  assert float(new.confusion.sum()) == bu
  assert float(new.confusion_masked.sum()) == pytest.approx(float(m["train/mask_rate"]) * bu)
  # The marginal moved (it is per class, not a scalar average) and stays a distribution.
  assert np.abs(np.asarray(new.marginal) - 0.1).max() > 1e-4
  np.testing.assert_allclose(float(new.marginal.sum()), 1.0, atol=1e-6)
  # EMA: ema' = d * ema + (1 - d) * params' with ema = params at init.
  leaf = lambda t: np.asarray(jax.tree_util.tree_leaves(t)[0])
  d = spec.step.ema_decay
  np.testing.assert_allclose(leaf(new.ema_params),
                             d * leaf(state.params) + (1 - d) * leaf(new.params), atol=1e-6)
  assert all(np.isfinite(float(v)) for v in m.values())
  # Same key, same state: the step is deterministic.
  again, _ = inp.step(state)
  np.testing.assert_array_equal(leaf(again.params), leaf(new.params))


def _reference_create_train_state(spec, model, image_shape):
  """create_train_state as it was before the recipe's options."""
  variables = model.init(jax.random.PRNGKey(spec.step.seed),
                         jnp.zeros((2, *image_shape), jnp.uint8), train=False)
  params = variables["params"]
  c, o = spec.step.num_classes, spec.optimizer

  def schedule(step):
    frac = jnp.minimum(step, o.total_steps) / o.total_steps
    return o.lr * jnp.cos(jnp.pi * o.cosine_factor * frac)

  def decay_mask(p):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", p)
  tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
                   optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  return state_lib.TrainState.create(
      apply_fn=model.apply, params=params, tx=tx,
      batch_stats=variables.get("batch_stats", {}),
      ema_params=jax.tree_util.tree_map(jnp.copy, params),
      marginal=jnp.full((c,), 1.0 / c, jnp.float32),
      confusion=jnp.zeros((c, c), jnp.float32),
      confusion_masked=jnp.zeros((c, c), jnp.float32))


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def _reference_step(state, data, *, model, cfg):
  """train_step and fixmatch_update as they were before the recipe's options."""
  key = step_key(cfg.seed, state.step)
  k_idx_l, k_idx_u, k_aug = jax.random.split(key, 3)
  il = jax.random.randint(k_idx_l, (cfg.batch_size,), 0, data["y_l"].shape[0])
  iu = jax.random.randint(k_idx_u, (cfg.batch_size * cfg.mu,), 0, data["y_u"].shape[0])
  x_l, y_l, x_u, y_u = data["x_l"][il], data["y_l"][il], data["x_u"][iu], data["y_u"][iu]
  k_l, k_w, k_s = jax.random.split(k_aug, 3)
  n_l, n_u = x_l.shape[0], x_u.shape[0]
  images = jnp.concatenate([augment.weak(k_l, x_l), augment.weak(k_w, x_u),
                            augment.strong(k_s, x_u)], axis=0)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    logits_l = logits[:n_l]
    logits_w, logits_s = logits[n_l:n_l + n_u], logits[n_l + n_u:]
    loss_x = jnp.mean(loss_lib.cross_entropy(logits_l, y_l))
    u = pseudo_label.unlabeled_loss(logits_w, logits_s, state.marginal, cfg.tau,
                                    cfg.threshold, cfg.marginal_momentum)
    return loss_x + cfg.lambda_u * u.loss, (updates["batch_stats"], loss_x, u)

  grads, (batch_stats, loss_x, u) = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  d = cfg.ema_decay
  ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, state.ema_params,
                               new_state.params)
  onehot_true = jax.nn.one_hot(y_u, cfg.num_classes, dtype=jnp.float32)
  onehot_pl = jax.nn.one_hot(u.labels, cfg.num_classes, dtype=jnp.float32)
  new_state = new_state.replace(
      batch_stats=batch_stats, ema_params=ema, marginal=u.marginal,
      confusion=state.confusion + onehot_true.T @ onehot_pl,
      confusion_masked=state.confusion_masked
      + (onehot_true * u.mask[:, None]).T @ onehot_pl)
  return new_state, {"train/loss": loss_x + cfg.lambda_u * u.loss, "train/loss_x": loss_x,
                     "train/loss_u": u.loss, "train/mask_rate": jnp.mean(u.mask),
                     "train/grad_norm": optax.global_norm(grads),
                     "train/param_norm": optax.global_norm(new_state.params)}


def test_options_off_step_is_bit_identical_to_plain_fixmatch_debiaspl(tiny_config, tiny_data):
  """With every recipe option off, the input stage and the step (the program the loop
  runs) are plain FixMatch + DebiasPL as written before the options: three steps give
  bit-identical states and metrics, and the state has the checkpoint layout of before."""
  spec, mesh, inp = _real_step(tiny_config, tiny_data)
  model = setup.build_model(spec.model)
  new = setup.new_state(spec, mesh)
  ref = mesh_lib.replicate(jax.device_get(_reference_create_train_state(
      spec, model, tiny_data.x_l.shape[1:])), mesh)
  data = mesh_lib.replicate({"x_l": tiny_data.x_l, "y_l": tiny_data.y_l,
                             "x_u": tiny_data.x_u, "y_u": tiny_data.y_u}, mesh)
  assert type(new) is state_lib.TrainState  # the checkpoint layout of before
  paths = lambda s: [p for p, _ in jax.tree_util.tree_flatten_with_path(s)[0]]
  assert paths(new) == paths(ref)
  for _ in range(3):
    new, m_new = inp.step(new)
    ref, m_ref = _reference_step(ref, data, model=model, cfg=dataclasses.replace(
        spec.step, mesh=None))
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(new)),
                  jax.tree_util.tree_leaves(jax.device_get(ref))):
    np.testing.assert_array_equal(a, b)
  assert {k: float(v) for k, v in m_new.items()} == {k: float(v) for k, v in m_ref.items()}
