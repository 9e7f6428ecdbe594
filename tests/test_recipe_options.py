"""The ImageNet recipe's training options, each against a hand-computed case.

EMA teacher (params and BN statistics), K weak/strong views, the CLD loss, warm-up then
cosine, weight decay on every parameter, initial weights from a file; and, with every
option off, a train step bit-identical to the CIFAR step as it was before the options.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlpl_jax import augment
from dlpl_jax.training import checkpoint
from dlpl_jax import configs
from dlpl_jax.data import in_memory as input_pipeline
from dlpl_jax import loss as loss_lib
from dlpl_jax import multiview
from dlpl_jax import pseudo_label
from dlpl_jax.training import step as train
from dlpl_jax.errors import UsageError
from tests import helpers

DATA = input_pipeline.synthetic(labeled_per_class=2, unlabeled=64, test=8)
SHAPE = DATA.x_l.shape[1:]


def tiny(**overrides):
  return helpers.small_config(**{"total_steps": 8, "threshold": 0.5,
                                 "marginal_momentum": 0.9, **overrides})


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_ce(logits, labels):
  """Per-example cross-entropy (F.cross_entropy(..., reduction='none'))."""
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return logz - logits[np.arange(len(labels)), labels]


# --- configs ------------------------------------------------------------------------


class TestConfig:

  def test_defaults_are_off(self):
    c = configs.get_base_config()
    for k, v in configs.RECIPE_DEFAULTS.items():
      assert c[k] == v, k
    configs.validate(c)

  @pytest.mark.parametrize("key,value,match", [
      ("num_views", 0, "num_views must be an integer >= 1"),
      ("teacher_momentum", 1.5, r"teacher_momentum must be a finite number in \[0, 1\]"),
      ("cld_weight", -0.1, "cld_weight must be a finite number >= 0"),
      ("cld_temperature", 0.0, "cld_temperature must be a finite number > 0"),
      ("lr_schedule", "step", "lr_schedule must be one of"),
      ("warmup_steps", 5, "apply to lr_schedule='warmup_cosine' only"),
      ("init_checkpoint", "/nonexistent/w.npz", "is not a file"),
  ])
  def test_bad_values_refused(self, key, value, match):
    with pytest.raises(UsageError, match=match):
      configs.validate(tiny(**{key: value}))

  def test_warmup_must_end_before_training(self):
    with pytest.raises(UsageError, match="below total_steps"):
      configs.validate(tiny(lr_schedule="warmup_cosine", warmup_steps=8))
    configs.validate(tiny(lr_schedule="warmup_cosine", warmup_steps=7, lr_update_every=2))

  def test_stored_run_without_the_keys_is_unchanged(self):
    current = configs.to_dict(tiny())
    stored = {k: v for k, v in current.items() if k not in configs.RECIPE_DEFAULTS}
    assert configs.training_diff(stored, current) == []
    assert configs.training_diff(stored, configs.to_dict(tiny(num_views=2))) == [
        ("num_views", 1, 2)]


# --- learning-rate schedule and weight decay ----------------------------------------


class TestSchedule:

  def test_equals_the_official_epoch_loop(self):
    # The official loop: warm-up lr * (epoch * S + i + 1) / (W * S) for epoch < W, then
    # lr * (1 + cos(pi * (epoch - W) / (E - W))) / 2 set at the start of each epoch.
    lr, s_per_epoch, w_epochs, epochs = 0.003, 7, 5, 50
    sched = train.learning_rate_schedule(tiny(
        lr=lr, total_steps=epochs * s_per_epoch, lr_schedule="warmup_cosine",
        warmup_steps=w_epochs * s_per_epoch, lr_update_every=s_per_epoch))
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

  def test_values_per_step(self):
    sched = train.learning_rate_schedule(tiny(
        lr=0.1, total_steps=100, lr_schedule="warmup_cosine", warmup_steps=10))
    np.testing.assert_allclose(float(sched(0)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(sched(9)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(sched(55)), 0.05, rtol=1e-5)   # half way: cos(pi/2)
    np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-9)

  def test_default_is_fixmatch_cosine(self):
    sched = train.learning_rate_schedule(tiny(total_steps=1000))
    np.testing.assert_allclose(float(sched(500)), 0.03 * np.cos(7 * np.pi * 500 / 16000),
                               rtol=1e-6)

  def test_weight_decay_all_decays_biases_and_bn(self):
    params = {"conv": {"kernel": jnp.ones(2)}, "bn": {"scale": jnp.ones(2)},
              "fc": {"bias": jnp.ones(2)}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for decay_all, decayed in ((False, {"kernel"}), (True, {"kernel", "scale", "bias"})):
      c = tiny(lr=0.5, weight_decay=0.1, nesterov=False, weight_decay_all=decay_all)
      tx = train.make_optimizer(c)
      upd, _ = tx.update(zeros, tx.init(params), params)
      lr0 = float(train.learning_rate_schedule(c)(0))
      for (path, u) in flax.traverse_util.flatten_dict(upd).items():
        want = -lr0 * 0.1 if path[-1] in decayed else 0.0
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, err_msg=str(path))


# --- CLD ----------------------------------------------------------------------------


def _np_cld(prob_s, prob_w, temperature):
  """The official CLDLoss / get_centroids statements in NumPy."""
  n, d = prob_w.shape
  cl = prob_w.argmin(axis=1)                                  # prob.argmin(dim=1)
  counts = np.ones(d)                                         # torch.ones([K])
  unique, cnt = np.unique(cl, return_counts=True)
  counts[unique] = cnt
  c = np.zeros((d, d))
  np.add.at(c, cl, prob_w)                                    # scatter_add_(0, Ncl, prob)
  c = c / counts[:, None]
  affinity = prob_s @ c.T                                     # torch.mm(prob_s, c_w.t())
  return _np_ce(affinity / temperature, cl).mean()            # F.cross_entropy, mean


class TestCLD:

  def test_equals_the_official_statements(self):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 4)) * 2
    w = rng.normal(size=(6, 4)) * 2
    got = float(jnp.mean(loss_lib.cld_loss(jnp.asarray(s, jnp.float32),
                                           jnp.asarray(w, jnp.float32), 0.07)))
    np.testing.assert_allclose(got, _np_cld(_np_softmax(s), _np_softmax(w), 0.07), rtol=1e-5)

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


# --- K views ------------------------------------------------------------------------


def _np_debias(z, marginal, tau):
  return _np_softmax(z - tau * np.log(marginal))


def _np_multiview(weak, strong, marginal, tau, threshold, momentum):
  """The official multiviews branch (K = 2) in NumPy: pseudo-labels from the mean of
  the weak logits and from each weak view, each crossed with each strong view."""
  w1, w2 = weak
  s1, s2 = strong
  w = (w1 + w2) / 2
  targets = []
  for z in (w, w1, w2):
    q = _np_debias(z, marginal, tau)
    targets.append((q.argmax(-1), (q.max(-1) >= threshold).astype(float)))
  qhat = momentum * marginal + (1 - momentum) * _np_softmax(w).mean(0)
  shifted = [s + tau * np.log(qhat) for s in (s1, s2)]
  loss = sum((_np_ce(z, labels) * mask).mean() for labels, mask in targets for z in shifted)
  return loss / 6, qhat, targets[0]


class TestMultiView:

  def test_two_views_equal_the_six_hand_computed_terms(self):
    rng = np.random.default_rng(2)
    weak = rng.normal(size=(2, 8, 5)) * 3
    strong = rng.normal(size=(2, 8, 5)) * 2
    marginal = np.array([0.4, 0.3, 0.1, 0.1, 0.1])
    out = multiview.multiview_unlabeled_loss(
        jnp.asarray(weak, jnp.float32), jnp.asarray(strong, jnp.float32),
        jnp.asarray(marginal, jnp.float32), tau=0.4, threshold=0.6, momentum=0.9)
    loss, qhat, (labels, mask) = _np_multiview(weak, strong, marginal, 0.4, 0.6, 0.9)
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


# --- the step with the options on -----------------------------------------------------


def _views(k, n_u=8, n_l=4):
  """Fixed augmented views (flips and shifts of the weak augmentation: fast to compile;
  the step takes any views as given)."""
  keys = jax.random.split(jax.random.PRNGKey(7), 2 * k + 1)
  weak_fn = jax.jit(augment.weak)
  x_l = weak_fn(keys[0], DATA.x_l[:n_l])
  weak = [weak_fn(keys[1 + i], DATA.x_u[:n_u]) for i in range(k)]
  strong = [weak_fn(keys[1 + k + i], DATA.x_u[:n_u]) for i in range(k)]
  return x_l, DATA.y_l[:n_l], weak, strong, DATA.y_u[:n_u]


@functools.partial(jax.jit, static_argnames=("apply_fn", "train_mode"))
def _apply_jit(variables, images, *, apply_fn, train_mode):
  if train_mode:
    return apply_fn(variables, images, train=True, mutable=["batch_stats"])
  return apply_fn(variables, images, train=False)


def _apply(state, variables, images, train_mode):
  return _apply_jit(variables, images, apply_fn=state.apply_fn, train_mode=train_mode)


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items()}


class TestTeacherStep:

  def test_teacher_gives_the_weak_logits_and_follows_the_student(self):
    c = tiny(teacher=True, teacher_momentum=0.9, mu=2)
    model = train.build_model(c)
    cfg = train.StepConfig.from_config(c)
    state = train.create_train_state(c, model, SHAPE)
    assert isinstance(state, train.TeacherTrainState)
    # A teacher that differs from the student, so that using the wrong one shows.
    state = state.replace(
        teacher_params=jax.tree_util.tree_map(lambda p: p * 1.5, state.teacher_params),
        teacher_batch_stats=jax.tree_util.tree_map(lambda v: v + 0.25,
                                                   state.teacher_batch_stats))
    x_l, y_l, weak, strong, y_u = _views(1)
    new, m = jax.jit(functools.partial(train.update_on_views, model=model, cfg=cfg,
                                       mesh=None))(state, x_l, y_l, weak, strong, y_u)
    # By hand: the teacher in eval mode on the weak view, the student in train mode on
    # [labeled, strong] only.
    t_logits = _apply(state, {"params": state.teacher_params,
                              "batch_stats": state.teacher_batch_stats}, weak[0], False)
    s_logits, upd = _apply(state, {"params": state.params, "batch_stats": state.batch_stats},
                           jnp.concatenate([x_l, strong[0]]), True)
    u = pseudo_label.unlabeled_loss(t_logits, s_logits[4:], state.marginal, cfg.tau,
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

  def test_two_views_and_cld_in_the_step(self):
    c = tiny(num_views=2, cld_weight=0.3, mu=2)
    model = train.build_model(c)
    cfg = train.StepConfig.from_config(c)
    state = train.create_train_state(c, model, SHAPE)
    x_l, y_l, weak, strong, y_u = _views(2)
    new, m = jax.jit(functools.partial(train.update_on_views, model=model, cfg=cfg,
                                       mesh=None))(state, x_l, y_l, jnp.stack(weak),
                                                   jnp.stack(strong), y_u)
    logits, _ = _apply(state, {"params": state.params, "batch_stats": state.batch_stats},
                       jnp.concatenate([x_l, *weak, *strong]), True)
    z = np.asarray(logits, np.float64)
    w, s = z[4:20].reshape(2, 8, -1), z[20:].reshape(2, 8, -1)
    loss_u, qhat, _ = _np_multiview(w, s, np.full(10, 0.1), cfg.tau, cfg.threshold,
                                    cfg.marginal_momentum)
    np.testing.assert_allclose(float(m["train/loss_u"]), loss_u, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(new.marginal), qhat, rtol=1e-5)
    # CLD on the mean strong logits (unshifted) against the mean weak logits.
    cld = _np_cld(_np_softmax(s.mean(0)), _np_softmax(w.mean(0)), 0.07)
    np.testing.assert_allclose(float(m["train/loss_cld"]), cld, rtol=1e-4)
    total = float(m["train/loss_x"]) + cfg.lambda_u * loss_u + 0.3 * cld
    np.testing.assert_allclose(float(m["train/loss"]), total, rtol=1e-4)

  @pytest.mark.slow  # compiles the whole step with two RandAugment views (~20 s on a CPU)
  def test_views_and_teacher_through_the_jitted_step_and_a_checkpoint(self, tmp_path):
    c = tiny(teacher=True, num_views=2, cld_weight=0.1)
    model = train.build_model(c)
    state = train.create_train_state(c, model, SHAPE)
    data = {"x_l": DATA.x_l, "y_l": DATA.y_l, "x_u": DATA.x_u, "y_u": DATA.y_u}
    for _ in range(2):
      state, m = train.jit_train_step(state, data, model=model,
                                      cfg=train.StepConfig.from_config(c))
    assert all(np.isfinite(float(v)) for v in m.values())
    ck = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1)
    ck.save(2, state, force=True)
    back, step = ck.restore_latest(train.create_train_state(c, model, SHAPE))
    assert step == 2
    for a, b in zip(_flat(back.teacher_batch_stats).values(),
                    _flat(state.teacher_batch_stats).values()):
      np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="the step's teacher = False"):
      train.jit_train_step(state, data, model=model,
                           cfg=train.StepConfig.from_config(tiny(num_views=2,
                                                                 cld_weight=0.1)))


# --- initial weights from a file ------------------------------------------------------


class TestInitCheckpoint:

  def _file_variables(self, c):
    """Random backbone variables of the model, without its classifier (as a
    self-supervised checkpoint)."""
    fresh = train.create_train_state(c, train.build_model(c), SHAPE)
    rng = np.random.default_rng(4)
    flat = {f"params/{k}": rng.normal(size=v.shape).astype(np.float32)
            for k, v in _flat(fresh.params).items() if not k.startswith("classifier")}
    flat.update({f"batch_stats/{k}": rng.uniform(0.5, 2, size=v.shape).astype(np.float32)
                 for k, v in _flat(fresh.batch_stats).items()})
    return fresh, flat

  @pytest.mark.parametrize("kind", ["npz", "msgpack"])
  def test_loads_exactly_the_files_arrays(self, tmp_path, kind):
    c = tiny(teacher=True)
    fresh, flat = self._file_variables(c)
    path = str(tmp_path / f"w.{kind}")
    if kind == "npz":
      np.savez(path, **flat)
    else:
      tree = flax.traverse_util.unflatten_dict({tuple(k.split("/")): v
                                                for k, v in flat.items()})
      with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(tree))
    c.init_checkpoint = path
    configs.validate(c)
    state = train.create_train_state(c, train.build_model(c), SHAPE)
    for tree_name, trees in (("params", (state.params, state.ema_params,
                                         state.teacher_params)),
                             ("batch_stats", (state.batch_stats,
                                              state.teacher_batch_stats))):
      for tree in trees:
        for k, v in _flat(tree).items():
          want = flat.get(f"{tree_name}/{k}")
          if want is None:  # the classifier: not in the file, kept at its init
            assert k.startswith("classifier")
            np.testing.assert_array_equal(v, _flat(getattr(fresh, tree_name))[k])
          else:
            np.testing.assert_array_equal(v, want)

  @pytest.mark.parametrize("change,match", [
      ({"params/conv0/kernel": np.zeros((3, 3, 3, 7), np.float32)},
       r"params/conv0/kernel: shape \(3, 3, 3, 7\) loaded, \(3, 3, 3, 32\) in the model"),
      ({"params/fc/kernel": np.zeros(3, np.float32)},
       "params/fc/kernel: in the loaded variables but not in the model"),
      ({"params/bn1/scale": None}, "params/bn1/scale: the model has it, the loaded"),
      ({"conv1.weight": np.zeros(3, np.float32)}, "'conv1.weight' are not Flax variable"),
  ])
  def test_wrong_file_refused(self, tmp_path, change, match):
    c = tiny()
    _, flat = self._file_variables(c)
    flat = {k: v for k, v in {**flat, **change}.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **flat)
    c.init_checkpoint = str(tmp_path / "bad.npz")
    with pytest.raises(UsageError, match=match):
      train.create_train_state(c, train.build_model(c), SHAPE)

  def test_a_file_that_is_no_npz_is_named_as_such(self, tmp_path):
    """Not numpy's hint to allow pickle: the file is simply not an .npz of arrays."""
    c = tiny()
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive at all")
    c.init_checkpoint = str(tmp_path / "junk.npz")
    with pytest.raises(UsageError, match=r"init_checkpoint: .*junk.npz is not a valid "
                                         r"\.npz of arrays") as e:
      train.create_train_state(c, train.build_model(c), SHAPE)
    assert "pickle" not in str(e.value)

  def test_a_resume_keeps_the_checkpoint_not_the_file(self, tmp_path):
    c = tiny()
    _, flat = self._file_variables(c)
    np.savez(tmp_path / "w.npz", **flat)
    c.init_checkpoint = str(tmp_path / "w.npz")
    model = train.build_model(c)
    saved = train.create_train_state(c, model, SHAPE)
    saved = saved.replace(params=jax.tree_util.tree_map(lambda p: p + 1.0, saved.params))
    ck = checkpoint.Checkpointer(str(tmp_path / "run"), every=1, keep=1)
    ck.save(3, saved, force=True)
    # What the trainer does: create the state (the file is loaded), then restore.
    back, _ = ck.restore_latest(train.create_train_state(c, model, SHAPE))
    np.testing.assert_array_equal(_flat(back.params)["conv0/kernel"],
                                  flat["params/conv0/kernel"] + 1.0)


# --- every option off: the step as it was -----------------------------------------------


def _reference_create_train_state(config, model, image_shape):
  """create_train_state as it was before the recipe's options."""
  variables = model.init(jax.random.PRNGKey(config.seed),
                         jnp.zeros((2, *image_shape), jnp.uint8), train=False)
  params = variables["params"]
  c = config.num_classes

  def schedule(step):
    frac = jnp.minimum(step, config.total_steps) / config.total_steps
    return config.lr * jnp.cos(jnp.pi * config.cosine_factor * frac)
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=train._decay_mask),  # pylint: disable=protected-access
                   optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
  return train.TrainState.create(
      apply_fn=model.apply, params=params, tx=tx,
      batch_stats=variables.get("batch_stats", {}),
      ema_params=jax.tree_util.tree_map(jnp.copy, params),
      marginal=jnp.full((c,), 1.0 / c, jnp.float32),
      confusion=jnp.zeros((c, c), jnp.float32),
      confusion_masked=jnp.zeros((c, c), jnp.float32))


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def _reference_step(state, data, *, model, cfg):
  """train_step and fixmatch_update as they were before the recipe's options."""
  key = train.step_key(cfg.seed, state.step)
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


def test_options_off_step_is_bit_identical_to_before():
  c = tiny()
  model = train.build_model(c)
  cfg = train.StepConfig.from_config(c)
  data = {"x_l": DATA.x_l, "y_l": DATA.y_l, "x_u": DATA.x_u, "y_u": DATA.y_u}
  new = train.create_train_state(c, model, SHAPE)
  ref = _reference_create_train_state(c, model, SHAPE)
  assert type(new) is train.TrainState  # the checkpoint layout of before
  paths = lambda s: [p for p, _ in jax.tree_util.tree_flatten_with_path(s)[0]]
  assert paths(new) == paths(ref)
  for _ in range(3):
    new, m_new = train.jit_train_step(new, data, model=model, cfg=cfg)
    ref, m_ref = _reference_step(ref, data, model=model, cfg=cfg)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(new)),
                  jax.tree_util.tree_leaves(jax.device_get(ref))):
    np.testing.assert_array_equal(a, b)
  assert {k: float(v) for k, v in m_new.items()} == {k: float(v) for k, v in m_ref.items()}


@pytest.mark.slow  # three short trainer runs (~35 s on a CPU)
def test_trainer_with_every_option_resumes_to_the_uninterrupted_state(tmp_path):
  from dlpl_jax.training import loop as trainer  # pylint: disable=g-import-not-at-top
  c0 = tiny()
  fresh = train.create_train_state(c0, train.build_model(c0), SHAPE)
  np.savez(tmp_path / "init.npz",
           **{f"params/{k}": v + 0.01 for k, v in _flat(fresh.params).items()
              if not k.startswith("classifier")},
           **{f"batch_stats/{k}": v for k, v in _flat(fresh.batch_stats).items()})
  c = tiny(total_steps=4, eval_every=2, log_every=1, checkpoint_every=2, eval_batch_size=8,
           progress=False, teacher=True, num_views=2, cld_weight=0.3,
           lr_schedule="warmup_cosine", warmup_steps=2, weight_decay_all=True,
           nesterov=False, init_checkpoint=str(tmp_path / "init.npz"))
  configs.validate(c)
  data = input_pipeline.synthetic(labeled_per_class=2, unlabeled=64, test=8)
  trainer.train_and_evaluate(c, str(tmp_path / "full"), data=data)
  assert trainer.train_and_evaluate(c, str(tmp_path / "part"), data=data,
                                    stop_at=2)["step"] == 2
  assert trainer.train_and_evaluate(c, str(tmp_path / "part"), data=data)["step"] == 4
  template = train.create_train_state(c, train.build_model(c), SHAPE)
  full, _ = checkpoint.Checkpointer(str(tmp_path / "full"), 2, 3).restore_latest(template)
  part, _ = checkpoint.Checkpointer(str(tmp_path / "part"), 2, 3).restore_latest(template)
  assert isinstance(part, train.TeacherTrainState)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(full)),
                  jax.tree_util.tree_leaves(jax.device_get(part))):
    np.testing.assert_array_equal(a, b)
