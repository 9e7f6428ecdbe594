"""Trainer tests: step bookkeeping, resume equivalence, non-finite stop, 2 vs 1 device."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax import configs
from dlpl_jax.data import in_memory as input_pipeline
from dlpl_jax.training import step as train
from dlpl_jax.training import loop as trainer
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  return helpers.small_config(**{
      "total_steps": 4, "eval_every": 2, "log_every": 1, "checkpoint_every": 2,
      "eval_batch_size": 64, "progress": False, "threshold": 0.5,
      "marginal_momentum": 0.9, **overrides})


DATA = input_pipeline.synthetic(labeled_per_class=2, unlabeled=64, test=64)


class TestStep:

  def test_one_step_bookkeeping(self):
    c = tiny_config()
    model = train.build_model(c)
    cfg = train.StepConfig.from_config(c)
    state = train.create_train_state(c, model, DATA.x_l.shape[1:])
    data = {"x_l": DATA.x_l, "y_l": DATA.y_l, "x_u": DATA.x_u, "y_u": DATA.y_u}
    new, m = train.jit_train_step(state, data, model=model, cfg=cfg)
    assert int(new.step) == 1
    # Every unlabeled image of the batch lands in the confusion matrix exactly once.
    assert float(new.confusion.sum()) == c.batch_size * c.mu
    assert float(new.confusion_masked.sum()) == pytest.approx(
        float(m["train/mask_rate"]) * c.batch_size * c.mu)
    # The marginal moved (it is per class, not a scalar average) and stays a distribution.
    assert np.abs(np.asarray(new.marginal) - 0.1).max() > 1e-4
    np.testing.assert_allclose(float(new.marginal.sum()), 1.0, atol=1e-6)
    # EMA: ema' = d * ema + (1 - d) * params' with ema = params at init.
    leaf = lambda t: jax.tree_util.tree_leaves(t)[0]
    np.testing.assert_allclose(
        leaf(new.ema_params), 0.999 * leaf(state.params) + 0.001 * leaf(new.params), atol=1e-6)
    assert all(np.isfinite(float(v)) for v in m.values())
    # Same key, same state: the step is deterministic.
    again, _ = train.jit_train_step(state, data, model=model, cfg=cfg)
    np.testing.assert_array_equal(leaf(again.params), leaf(new.params))

  def test_fixmatch_method_uses_tau_zero(self):
    assert train.StepConfig.from_config(tiny_config(method="fixmatch")).tau == 0.0
    assert train.StepConfig.from_config(tiny_config(tau=0.7)).tau == 0.7

  def test_lr_schedule_is_fixmatch_cosine(self):
    c = tiny_config(total_steps=1000)
    lr = train.learning_rate_schedule(c)
    np.testing.assert_allclose(lr(0), 0.03)
    np.testing.assert_allclose(lr(500), 0.03 * np.cos(7 * np.pi * 500 / (16 * 1000)), rtol=1e-6)
    np.testing.assert_allclose(lr(1000), 0.03 * np.cos(7 * np.pi / 16), rtol=1e-6)

  def test_bad_config_values_refused(self):
    with pytest.raises(ValueError, match="method must be one of"):
      configs.validate(tiny_config(method="mixmatch"))
    with pytest.raises((AttributeError, KeyError), match="does not exist"):
      tiny_config(lables_per_class=4)


def _leaves(state):
  return jax.device_get(jax.tree_util.tree_leaves(
      (state.params, state.batch_stats, state.opt_state, state.ema_params, state.marginal)))


def test_resume_gives_identical_state(tmp_path):
  c = tiny_config()
  s_full = trainer.train_and_evaluate(c, str(tmp_path / "full"), data=DATA)
  s_part = trainer.train_and_evaluate(c, str(tmp_path / "part"), data=DATA, stop_at=2)
  assert s_part["interrupted"] and s_part["step"] == 2
  s_rest = trainer.train_and_evaluate(c, str(tmp_path / "part"), data=DATA)
  assert not s_rest["interrupted"] and s_rest["step"] == 4
  model = train.build_model(c)
  template = train.create_train_state(c, model, DATA.x_l.shape[1:])
  from dlpl_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  full, step_f = checkpoint.Checkpointer(str(tmp_path / "full"), 2, 3).restore_latest(template)
  part, step_p = checkpoint.Checkpointer(str(tmp_path / "part"), 2, 3).restore_latest(template)
  assert step_f == step_p == 4
  for a, b in zip(_leaves(full), _leaves(part)):
    np.testing.assert_array_equal(a, b)
  # The marginal was restored, not reset to uniform, and the metrics are complete.
  assert np.abs(np.asarray(part.marginal) - 0.1).max() > 1e-4
  evals = [json.loads(l) for l in open(tmp_path / "part" / "metrics.jsonl")
           if '"eval"' in l]
  assert [e["step"] for e in evals] == [2, 4]
  assert s_rest["final_top1"] == s_full["final_top1"]


def test_non_finite_loss_stops_naming_step(tmp_path):
  c = tiny_config(lr=1e30, total_steps=6, checkpoint_every=6, eval_every=6)
  with pytest.raises(trainer.NonFiniteLossError,
                     match=r"non-finite train/(loss|param_norm).* at step \d+"):
    trainer.train_and_evaluate(c, str(tmp_path), data=DATA)
  assert not os.path.exists(tmp_path / "checkpoints" / "6")


def test_two_devices_equal_one_device():
  code = textwrap.dedent("""
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
      import jax, numpy as np
      from dlpl_jax.data import in_memory as input_pipeline, train
      from tests.test_train import tiny_config
      assert len(jax.devices()) == 2, jax.devices()
      c = tiny_config(batch_size=4, mu=2)
      d = input_pipeline.synthetic(labeled_per_class=2, unlabeled=64, test=8)
      model = train.build_model(c)
      cfg = train.StepConfig.from_config(c)
      out = []
      for devs in (jax.devices()[:1], jax.devices()):
        mesh = train.make_mesh(devs)
        state = train.replicate(jax.device_get(
            train.create_train_state(c, model, d.x_l.shape[1:])), mesh)
        data = train.replicate({"x_l": d.x_l, "y_l": d.y_l, "x_u": d.x_u, "y_u": d.y_u}, mesh)
        for _ in range(2):
          state, m = train.jit_train_step(state, data, model=model, cfg=cfg, mesh=mesh)
        xt, yt = train.replicate(train.pad_test_set(d.x_test, d.y_test, 4), mesh)
        ev = train.evaluate(state, xt, yt, model=model, num_classes=10, batch=4, mesh=mesh)
        out.append(jax.device_get((state.params, state.batch_stats, state.marginal,
                                   ev["class_features"])))
        print(len(devs), "devices: marginal", np.round(out[-1][2], 5))
      for a, b in zip(jax.tree_util.tree_leaves(out[0]), jax.tree_util.tree_leaves(out[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
      print("OK")
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr[-3000:]
