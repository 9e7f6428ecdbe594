"""The train state, the optimizer and its learning-rate schedules
(dlpl_jax/training/state.py)."""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlpl_jax.training import state as state_lib
from dlpl_jax.training.state import OptimizerConfig


class TinyBN(nn.Module):
  """A model with params and BN statistics, small enough to init in milliseconds."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    z = nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1) / 255.0)
    return nn.BatchNorm(use_running_average=not train, name="bn")(z)


# --- schedules --------------------------------------------------------------------------


class TestSchedule:

  def test_fixmatch_cosine(self):
    lr = state_lib.learning_rate(OptimizerConfig(lr=0.03, total_steps=1000))
    np.testing.assert_allclose(lr(0), 0.03)
    np.testing.assert_allclose(lr(500), 0.03 * np.cos(7 * np.pi * 500 / (16 * 1000)), rtol=1e-6)
    np.testing.assert_allclose(lr(1000), 0.03 * np.cos(7 * np.pi / 16), rtol=1e-6)
    # Held at the last value after total_steps.
    np.testing.assert_allclose(lr(5000), lr(1000))

  def test_warmup_cosine_equals_the_official_epoch_loop(self):
    # The official loop: warm-up lr * (epoch * S + i + 1) / (W * S) for epoch < W, then
    # lr * (1 + cos(pi * (epoch - W) / (E - W))) / 2 set at the start of each epoch.
    lr, s_per_epoch, w_epochs, epochs = 0.003, 7, 5, 50
    sched = state_lib.learning_rate(OptimizerConfig(
        lr=lr, total_steps=epochs * s_per_epoch, schedule="warmup_cosine",
        warmup_steps=w_epochs * s_per_epoch, update_every=s_per_epoch))
    expected = []
    for epoch in range(epochs):
      for i in range(s_per_epoch):
        if epoch < w_epochs:
          expected.append(lr * (epoch * s_per_epoch + i + 1) / (w_epochs * s_per_epoch))
        else:
          progress = (epoch - w_epochs) / (epochs - w_epochs)
          expected.append(lr * 0.5 * (1 + np.cos(np.pi * progress)))
    got = np.asarray(jax.vmap(sched)(jnp.arange(epochs * s_per_epoch)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)  # float32 cosine

  def test_warmup_cosine_values_per_step(self):
    sched = state_lib.warmup_cosine(0.1, warmup_steps=10, total_steps=100)
    np.testing.assert_allclose(float(sched(0)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(sched(9)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(sched(55)), 0.05, rtol=1e-5)   # half way: cos(pi/2)
    np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-9)

  def test_default_is_fixmatch_cosine(self):
    opt = OptimizerConfig(lr=0.03, total_steps=1000)
    assert opt.schedule == "fixmatch" and opt.cosine_factor == 7 / 16
    np.testing.assert_allclose(float(state_lib.learning_rate(opt)(500)),
                               0.03 * np.cos(7 * np.pi * 500 / 16000), rtol=1e-6)

  def test_equal_configs_give_the_same_functions(self):
    """The schedule and the optimizer are static parts of the state: equal configs must
    give the same objects, or jit's caches miss."""
    a, b = OptimizerConfig(lr=0.1), OptimizerConfig(lr=0.1)
    assert state_lib.learning_rate(a) is state_lib.learning_rate(b)
    assert state_lib.make_optimizer(a) is state_lib.make_optimizer(b)
    assert state_lib.make_optimizer(a) is not state_lib.make_optimizer(
        dataclasses.replace(a, lr=0.2))


# --- the optimizer ----------------------------------------------------------------------


class TestOptimizer:

  def test_weight_decay_all_decays_biases_and_bn(self):
    params = {"conv": {"kernel": jnp.ones(2)}, "bn": {"scale": jnp.ones(2)},
              "fc": {"bias": jnp.ones(2)}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for decay_all, decayed in ((False, {"kernel"}), (True, {"kernel", "scale", "bias"})):
      opt = OptimizerConfig(lr=0.5, weight_decay=0.1, nesterov=False, decay_all=decay_all)
      tx = state_lib.make_optimizer(opt)
      upd, _ = tx.update(zeros, tx.init(params), params)
      lr0 = float(state_lib.learning_rate(opt)(0))
      for (path, u) in flax.traverse_util.flatten_dict(upd).items():
        want = -lr0 * 0.1 if path[-1] in decayed else 0.0
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, err_msg=str(path))

  def test_coupled_decay_then_nesterov_momentum(self):
    """SGD as torch.optim.SGD(nesterov=True, weight_decay=wd): g' = g + wd p, then two
    steps of Nesterov momentum."""
    p = {"kernel": jnp.array([1.0, -2.0])}
    g = {"kernel": jnp.array([0.5, 0.25])}
    opt = OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=0.01, total_steps=10)
    tx = state_lib.make_optimizer(opt)
    lr = state_lib.learning_rate(opt)
    s = tx.init(p)
    u1, s = tx.update(g, s, p)
    gp = np.array([0.5, 0.25]) + 0.01 * np.array([1.0, -2.0])
    np.testing.assert_allclose(u1["kernel"], -float(lr(0)) * (gp + 0.9 * gp), rtol=1e-6)
    u2, _ = tx.update(g, s, p)
    trace = gp + 0.9 * gp
    np.testing.assert_allclose(u2["kernel"], -float(lr(1)) * (gp + 0.9 * trace), rtol=1e-6)


# --- the state --------------------------------------------------------------------------


def _tx():
  return state_lib.make_optimizer(OptimizerConfig(lr=0.1))


class TestCreateTrainState:

  def test_fresh_state(self):
    model = TinyBN()
    s = state_lib.create_train_state(model, _tx(), seed=0, image_shape=(2, 2, 3))
    assert type(s) is state_lib.TrainState and int(s.step) == 0
    np.testing.assert_array_equal(s.marginal, np.full(3, 1 / 3, np.float32))
    assert s.marginal.dtype == jnp.float32
    np.testing.assert_array_equal(s.confusion, np.zeros((3, 3)))
    np.testing.assert_array_equal(s.confusion_masked, np.zeros((3, 3)))
    assert set(s.batch_stats["bn"]) == {"mean", "var"}
    for a, b in zip(jax.tree_util.tree_leaves(s.ema_params), jax.tree_util.tree_leaves(s.params)):
      np.testing.assert_array_equal(a, b)
    # The same seed gives the same params, another seed others.
    again = state_lib.create_train_state(model, _tx(), seed=0, image_shape=(2, 2, 3))
    other = state_lib.create_train_state(model, _tx(), seed=1, image_shape=(2, 2, 3))
    np.testing.assert_array_equal(again.params["fc"]["kernel"], s.params["fc"]["kernel"])
    assert not np.array_equal(other.params["fc"]["kernel"], s.params["fc"]["kernel"])

  def test_teacher_state_starts_at_the_student(self):
    s = state_lib.create_train_state(TinyBN(), _tx(), seed=0, image_shape=(2, 2, 3),
                                     teacher=True)
    assert isinstance(s, state_lib.TeacherTrainState)
    for teacher, student in ((s.teacher_params, s.params),
                             (s.teacher_batch_stats, s.batch_stats)):
      assert (jax.tree_util.tree_structure(teacher)
              == jax.tree_util.tree_structure(student))
      for a, b in zip(jax.tree_util.tree_leaves(teacher), jax.tree_util.tree_leaves(student)):
        np.testing.assert_array_equal(a, b)
    # Without the teacher the layout is TrainState's exactly (its checkpoints).
    plain = state_lib.create_train_state(TinyBN(), _tx(), seed=0, image_shape=(2, 2, 3))
    paths = lambda t: [p for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
    assert set(paths(plain)) < set(paths(s))
    assert not hasattr(plain, "teacher_params")

  def test_init_replaces_the_fresh_variables(self):
    def init(variables):
      return {**variables, "params": jax.tree_util.tree_map(lambda p: p * 0 + 2.0,
                                                            variables["params"])}
    s = state_lib.create_train_state(TinyBN(), _tx(), seed=0, image_shape=(2, 2, 3),
                                     teacher=True, init=init)
    for tree in (s.params, s.ema_params, s.teacher_params):
      assert all(np.all(np.asarray(x) == 2.0) for x in jax.tree_util.tree_leaves(tree))

  def test_apply_gradients_uses_the_optimizer(self):
    s = state_lib.create_train_state(TinyBN(), _tx(), seed=0, image_shape=(2, 2, 3))
    grads = jax.tree_util.tree_map(jnp.ones_like, s.params)
    new = s.apply_gradients(grads=grads)
    assert int(new.step) == 1
    assert not np.array_equal(new.params["fc"]["kernel"], s.params["fc"]["kernel"])
