"""Tests of dlpl_jax.models: parameter counts, shapes, dtypes, BatchNorm state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax import models

# kekmodel/FixMatch-pytorch models/wideresnet.py (bias-free convs) prints 1.47M for
# WRN-28-2 at 10 classes: 432 (stem conv) + 1,465,888 (12 blocks and final BN) + 1,290
# (head) = 1,467,610, counted layer by layer; WRN-28-8 at 100 classes: 23.4M.
REFERENCE_WRN28_2 = 1_467_610
REFERENCE_WRN28_8 = 23.4e6


def _shapes(model, batch=2, size=32):
  x = jnp.zeros((batch, size, size, 3), jnp.uint8)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _images(batch=4, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3),
                                              dtype=np.uint8)


def test_param_counts():
  n28_2 = models.param_count(_shapes(models.create_model("wrn28_2", 10))["params"])
  n28_8 = models.param_count(_shapes(models.create_model("wrn28_8", 100))["params"])
  ncnn = models.param_count(_shapes(models.create_model("cnn_small", 10))["params"])
  print(f"WRN-28-2: {n28_2:,}  WRN-28-8: {n28_8:,}  SmallCNN: {ncnn:,}")
  assert abs(n28_2 - REFERENCE_WRN28_2) <= 0.01 * REFERENCE_WRN28_2
  assert abs(n28_8 - REFERENCE_WRN28_8) <= 0.01 * REFERENCE_WRN28_8
  assert 100_000 <= ncnn <= 300_000


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="wrn28_2.*wrn28_8.*cnn_small"):
    models.create_model("resnet50", 10)


def test_wrn_shapes_and_bn_updates():
  model = models.create_model("wrn28_2", 10)
  x = _images(batch=2)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)

  @jax.jit
  def run(variables, x):
    train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    eval_out, feats = model.apply(variables, x, train=False, return_features=True)
    return train_out, updates, eval_out, feats

  train_out, updates, eval_out, feats = run(variables, x)
  for out in (train_out, eval_out):
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
  assert feats.shape == (2, 128) and feats.dtype == jnp.float32
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))


@pytest.fixture(scope="module")
def cnn():
  model = models.create_model("cnn_small", 10)
  variables = model.init(jax.random.key(0), _images(batch=2), train=False)
  return model, variables


def test_cnn_train_and_eval(cnn):
  model, variables = cnn
  x = _images()
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))

  # Eval mode uses running averages and leaves batch_stats untouched.
  logits, state = model.apply(variables, x, train=False, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                      variables["batch_stats"], state["batch_stats"])
  assert all(jax.tree.leaves(same))


def test_cnn_features_and_input_dtypes(cnn):
  model, variables = cnn
  x = _images()
  logits, feats = model.apply(variables, x, train=False, return_features=True)
  assert feats.shape == (4, 128) and feats.dtype == jnp.float32
  logits_f = model.apply(variables, x.astype(np.float32), train=False)
  np.testing.assert_allclose(logits, logits_f, rtol=1e-6, atol=1e-6)


def test_normalization_override():
  model = models.SmallCNN(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  x = _images(batch=2)
  variables = model.init(jax.random.key(0), x, train=False)
  a = models.SmallCNN().apply(variables, x, train=False)
  b = model.apply(variables, x, train=False)
  assert not np.allclose(a, b)


@pytest.mark.parametrize("make", [
    lambda: models.create_model("cnn_small", 10, dtype=jnp.bfloat16),
    # A shallow WRN exercises the same blocks as WRN-28-2 and compiles faster.
    lambda: models.WideResNet(depth=10, width=2, dtype=jnp.bfloat16),
], ids=["cnn_small", "wrn10_2"])
def test_bfloat16(make):
  model = make()
  x = _images(batch=2)

  @jax.jit
  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    _, feats = model.apply(variables, x, train=False, return_features=True)
    return variables, logits, updates, feats

  variables, logits, updates, feats = run(x)
  f32 = {np.dtype(np.float32)}
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == f32
  assert {p.dtype for p in jax.tree.leaves(updates["batch_stats"])} == f32
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  assert feats.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
