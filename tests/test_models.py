"""Tests of dlpl_jax.models: parameter counts, shapes, dtypes, BatchNorm state."""

import flax.linen as nn
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
  with pytest.raises(ValueError, match="wrn28_2.*wrn28_8.*cnn_small.*resnet50"):
    models.create_model("resnet18", 10)


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


# ----------------------------------------------------------------------------------
# Pins of the three places where this WRN follows the TensorFlow FixMatch and
# kekmodel/FixMatch-pytorch differs (see the WideResNet docstring). Each records
# what a module of WRN-28-2 receives and returns through nn.intercept_methods.

FIRST_BLOCKS = ("group0_block0", "group1_block0", "group2_block0")


@pytest.fixture(scope="module")
def wrn():
  """WRN-28-2 with randomised BN statistics / affine params, and one eval pass."""
  model = models.create_model("wrn28_2", 10)
  x = _images(batch=2, seed=1)
  variables = model.init(jax.random.key(0), x, train=False)
  rng = np.random.default_rng(0)

  def jitter(path, v):
    name = path[-1].key
    if name == "var":  # small variances make epsilon matter
      return jnp.asarray(rng.uniform(1e-3, 2.0, v.shape), v.dtype)
    if name in ("mean", "bias"):
      return jnp.asarray(rng.normal(0, 0.1, v.shape), v.dtype)
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype)
    return v
  variables = jax.tree_util.tree_map_with_path(jitter, variables)
  logits, calls = _record_calls(model, variables, x)
  return model, variables, x, logits, calls


def _record_calls(model, variables, x):
  """Eval-mode logits and {module path: (module, input, output)} of every call."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and args:
      calls["/".join(context.module.scope.path)] = (context.module, args[0], out)
    return out
  with nn.intercept_methods(record):
    logits = model.apply(variables, x, train=False)
  return logits, calls


def test_batchnorm_epsilon_is_tf_1e3_not_pytorch_1e5(wrn):
  _, variables, _, _, calls = wrn
  bns = {k: m for k, (m, _, _) in calls.items() if isinstance(m, nn.BatchNorm)}
  assert len(bns) == 2 * 12 + 1  # bn1, bn2 of the 12 blocks, and bn_out
  assert {m.epsilon for m in bns.values()} == {1e-3}
  assert {m.momentum for m in bns.values()} == {0.999}  # PyTorch momentum=0.001
  # Numerically: (x - mean) / sqrt(var + 1e-3) * scale + bias, with small variances.
  _, x_in, out = calls["group1_block0/bn1"]
  stats = variables["batch_stats"]["group1_block0"]["bn1"]
  affine = variables["params"]["group1_block0"]["bn1"]
  for eps, close in ((1e-3, True), (1e-5, False)):
    ref = ((x_in - stats["mean"]) / jnp.sqrt(stats["var"] + eps) * affine["scale"]
           + affine["bias"])
    assert np.allclose(out, ref, rtol=1e-5, atol=1e-5) == close, eps


@pytest.mark.parametrize("block", FIRST_BLOCKS)
def test_first_block_conv1_takes_preactivated_input(wrn, block):
  # conv1 of every group's first block sees leaky_relu(bn1(x)), as in the TF
  # FixMatch. kekmodel feeds the raw block input x to conv1 in groups 2 and 3.
  _, _, _, _, calls = wrn
  _, x_block, _ = calls[block]
  _, _, bn1_out = calls[f"{block}/bn1"]
  _, conv1_in, _ = calls[f"{block}/conv1"]
  np.testing.assert_array_equal(conv1_in, nn.leaky_relu(bn1_out, 0.1))
  assert not np.allclose(conv1_in, x_block)
  # The 1x1 projection shortcut: pre-activated input in group 1 only
  # (activate_before_residual), the raw block input in groups 2 and 3 (both codes).
  _, shortcut_in, _ = calls[f"{block}/shortcut"]
  expected = conv1_in if block == "group0_block0" else x_block
  np.testing.assert_array_equal(shortcut_in, expected)


def test_bn1_of_group2_first_block_changes_logits(wrn):
  # Behavioural form of the pin above: in kekmodel this BN's output is discarded,
  # so its scale could not change the logits.
  model, variables, x, logits, _ = wrn
  bumped = jax.tree_util.tree_map(lambda v: v, variables)
  scale = bumped["params"]["group1_block0"]["bn1"]["scale"]
  bumped["params"]["group1_block0"]["bn1"]["scale"] = scale * 2.0
  assert not np.allclose(model.apply(bumped, x, train=False), logits, atol=1e-4)


@pytest.mark.parametrize("block", FIRST_BLOCKS[1:])
def test_stride2_conv_pads_same_0_before_1_after(wrn, block):
  # flax "SAME" at stride 2 on an even size pads 0 before / 1 after (as TF's
  # 'same'); kekmodel's Conv2d(padding=1) pads 1 on both sides.
  _, variables, _, _, calls = wrn
  _, conv1_in, conv1_out = calls[f"{block}/conv1"]
  kernel = variables["params"][block]["conv1"]["kernel"]
  assert conv1_in.shape[1] % 2 == 0 and conv1_out.shape[1] == conv1_in.shape[1] // 2

  def conv(pads):
    return jax.lax.conv_general_dilated(
        conv1_in, kernel, (2, 2), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(conv1_out, conv(((0, 1), (0, 1))), rtol=1e-4, atol=1e-4)
  symmetric = conv(((1, 1), (1, 1)))
  assert symmetric.shape == conv1_out.shape
  assert not np.allclose(conv1_out, symmetric, rtol=1e-2, atol=1e-2)
  # The 1x1 stride-2 shortcut needs no padding: it reads the even pixels (both codes).
  _, sc_in, sc_out = calls[f"{block}/shortcut"]
  sc_kernel = variables["params"][block]["shortcut"]["kernel"][0, 0]
  np.testing.assert_allclose(
      sc_out, jnp.einsum("bhwc,cf->bhwf", sc_in[:, ::2, ::2], sc_kernel,
                         precision=jax.lax.Precision.HIGHEST), rtol=1e-4, atol=1e-4)
