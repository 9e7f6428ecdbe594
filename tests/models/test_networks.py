"""Tests for dlpl_jax.models.networks: parameter counts, shapes, dtypes, BatchNorm state
of the Wide ResNet and the small CNN; the three places where the WRN follows the
TensorFlow FixMatch rather than kekmodel/FixMatch-pytorch; the ResNet-50's size,
torchvision layout, BatchNorm momentum and bfloat16.

No model is initialised with ``model.init`` here (``init`` draws every parameter with
the random number generator, which costs more to compile, or to run eagerly, than the
forward passes): shapes come from ``jax.eval_shape`` and weights from NumPy, He-normal
kernels and BatchNorm at identity (:func:`_variables`). Each model's forward passes are
jitted once per module (fixtures), at batch 2 or 4 and 32x32. The ResNet-50's equality
with torch's arithmetic is tested in tests/tools/test_convert.py.
"""

import math

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
TORCHVISION_RESNET50_PARAMS = 25_557_032  # sum(p.numel()) of torchvision resnet50()


def _shapes(model, batch=2, size=32):
  """The model's variables as ShapeDtypeStructs (``init`` traced, not run)."""
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _variables(model, seed=0):
  """Random weights of the model's shapes: He-normal kernels (fan in), BatchNorm at
  identity (scale and running variance 1, offset and running mean 0), zero biases."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(s.shape[:-1])
      return (rng.normal(size=s.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    if name in ("scale", "var"):
      return np.ones(s.shape, np.float32)
    return np.zeros(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, _shapes(model))


def _images(batch=4, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3),
                                              dtype=np.uint8)


def _all_changed(before, after):
  return all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                          before, after)))


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
  with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
    models.create_model("cnn_small", 0)
  with pytest.raises(ValueError, match=r"WRN depth must be 6n \+ 4, got 27"):
    _shapes(models.WideResNet(depth=27))


# ----------------------------------------------------------------------------------
# The small CNN.

@pytest.fixture(scope="module")
def cnn():
  """The small CNN, random weights and ``run(variables, x)`` compiled once: train-mode
  logits and BN updates, eval-mode logits with the batch_stats collection mutable
  (to show it untouched), and eval-mode features."""
  model = models.create_model("cnn_small", 10)

  @jax.jit
  def run(variables, x):
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    logits, state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    _, feats = model.apply(variables, x, train=False, return_features=True)
    return dict(train_logits=train_logits, updates=updates, logits=logits, state=state,
                feats=feats)
  return model, _variables(model), run


def test_cnn_train_and_eval(cnn):
  _, variables, run = cnn
  out = run(variables, _images())
  assert out["train_logits"].shape == (4, 10) and out["train_logits"].dtype == jnp.float32
  assert _all_changed(variables["batch_stats"], out["updates"]["batch_stats"])

  # Eval mode uses running averages and leaves batch_stats untouched.
  assert out["logits"].shape == (4, 10) and out["logits"].dtype == jnp.float32
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                      variables["batch_stats"], out["state"]["batch_stats"])
  assert all(jax.tree.leaves(same))


def test_cnn_features_and_input_dtypes(cnn):
  _, variables, run = cnn
  x = _images()
  out = run(variables, x)
  assert out["feats"].shape == (4, 128) and out["feats"].dtype == jnp.float32
  logits_f = run(variables, x.astype(np.float32))["logits"]
  np.testing.assert_allclose(out["logits"], logits_f, rtol=1e-6, atol=1e-6)


def test_normalization_override(cnn):
  _, variables, run = cnn
  model = models.SmallCNN(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  x = _images()
  a = run(variables, x)["logits"]
  b = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert not np.allclose(a, b)


@pytest.mark.parametrize("make", [
    lambda: models.create_model("cnn_small", 10, dtype=jnp.bfloat16),
    # A shallow WRN exercises the same blocks as WRN-28-2 and compiles faster.
    lambda: models.WideResNet(depth=10, width=2, dtype=jnp.bfloat16),
], ids=["cnn_small", "wrn10_2"])
def test_bfloat16(make):
  model = make()
  x = _images(batch=2)
  # Parameters (and BatchNorm statistics) stay float32 at any computation dtype.
  f32 = {np.dtype(np.float32)}
  shapes = _shapes(model)
  assert {p.dtype for p in jax.tree.leaves(shapes)} == f32
  variables = _variables(model)

  @jax.jit
  def run(variables, x):
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    _, feats = model.apply(variables, x, train=False, return_features=True)
    return logits, updates, feats

  logits, updates, feats = run(variables, x)
  assert {p.dtype for p in jax.tree.leaves(updates["batch_stats"])} == f32
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  assert feats.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


# ----------------------------------------------------------------------------------
# WRN-28-2: shapes and BatchNorm updates, and pins of the three places where this WRN
# follows the TensorFlow FixMatch and kekmodel/FixMatch-pytorch differs (see the
# WideResNet docstring). Each pin reads what a module of WRN-28-2 receives and returns,
# recorded through nn.intercept_methods.

FIRST_BLOCKS = ("group0_block0", "group1_block0", "group2_block0")


@pytest.fixture(scope="module")
def wrn():
  """WRN-28-2 with random weights and randomised BN statistics / affine params, and
  ``run(variables, x)``, compiled once: the eval-mode logits, what every module call
  received and returned, eval-mode features, train-mode logits and BN updates."""
  model = models.create_model("wrn28_2", 10)
  x = _images(batch=2, seed=1)
  rng = np.random.default_rng(0)

  def jitter(path, v):
    name = path[-1].key
    if name == "var":  # small variances make epsilon matter
      return jnp.asarray(rng.uniform(1e-3, 2.0, v.shape), v.dtype)
    if name in ("mean", "bias"):
      return jnp.asarray(rng.normal(0, 0.1, v.shape), v.dtype)
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype)
    return jnp.asarray(v)
  variables = jax.tree_util.tree_map_with_path(jitter, _variables(model))
  modules = {}  # module path -> the bound module (recorded while tracing)

  @jax.jit
  def run(variables, x):
    calls = {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and args:
        path = "/".join(context.module.scope.path)
        modules[path] = context.module
        calls[path] = (args[0], out)
      return out
    with nn.intercept_methods(record):
      logits = model.apply(variables, x, train=False)
    _, feats = model.apply(variables, x, train=False, return_features=True)
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return dict(logits=logits, calls=calls, feats=feats, train_logits=train_logits,
                updates=updates)

  out = run(variables, x)
  calls = {k: (modules[k], *v) for k, v in out["calls"].items()}
  return model, variables, x, out, calls, run


def test_wrn_shapes_and_bn_updates(wrn):
  _, variables, _, out, _, _ = wrn
  for logits in (out["train_logits"], out["logits"]):
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
  assert out["feats"].shape == (2, 128) and out["feats"].dtype == jnp.float32
  assert _all_changed(variables["batch_stats"], out["updates"]["batch_stats"])


def test_batchnorm_epsilon_is_tf_1e3_not_pytorch_1e5(wrn):
  _, variables, _, _, calls, _ = wrn
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
  _, _, _, _, calls, _ = wrn
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
  _, variables, x, out, _, run = wrn
  bumped = jax.tree_util.tree_map(lambda v: v, variables)
  scale = bumped["params"]["group1_block0"]["bn1"]["scale"]
  bumped["params"]["group1_block0"]["bn1"]["scale"] = scale * 2.0
  assert not np.allclose(run(bumped, x)["logits"], out["logits"], atol=1e-4)


@pytest.mark.parametrize("block", FIRST_BLOCKS[1:])
def test_stride2_conv_pads_same_0_before_1_after(wrn, block):
  # flax "SAME" at stride 2 on an even size pads 0 before / 1 after (as TF's
  # 'same'); kekmodel's Conv2d(padding=1) pads 1 on both sides.
  _, variables, _, _, calls, _ = wrn
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


# ----------------------------------------------------------------------------------
# ResNet-50 (torchvision layout). A 25M-parameter init would cost ~10 s on one CPU core.

def _resnet(num_classes, dtype=jnp.float32):
  return models.create_model("resnet50", num_classes, dtype)


def test_resnet50_parameter_count_equals_torchvision():
  shapes = _shapes(_resnet(1000), batch=1)
  assert models.param_count(shapes["params"]) == TORCHVISION_RESNET50_PARAMS
  # 53 BatchNorms (stem, 16 blocks x 3, 4 downsample) carry running statistics.
  assert len(jax.tree_util.tree_leaves(shapes["batch_stats"])) == 2 * 53
  assert "resnet50" in models.MODEL_NAMES


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def test_resnet50_layout_at_224():
  """torchvision's sizes: 112 after conv1, 56 after the pool, 7x7x2048 at the end;
  stride on conv2 (3x3) of the first block of stages 2-4, none on conv1 (1x1)."""
  model = _resnet(1000)
  shapes = _shapes(model, batch=1)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.uint8)
  out, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                               mutable=["intermediates"]), shapes, x)
  inter = state["intermediates"]
  size = lambda *path: _get(inter, path + ("__call__",))[0].shape  # noqa: E731
  assert size("conv1") == (1, 112, 112, 64)
  assert size("layer1_0") == (1, 56, 56, 256)
  assert size("layer2_0", "conv1") == (1, 56, 56, 128)
  assert size("layer2_0", "conv2") == (1, 28, 28, 128)
  assert size("layer2_0", "downsample_0") == (1, 28, 28, 512)
  assert size("layer4_2") == (1, 7, 7, 2048)
  assert out.shape == (1, 1000)
  params = shapes["params"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert params["layer3_0"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
  assert params["classifier"]["kernel"].shape == (2048, 1000)
  assert "downsample_0" not in params["layer1_1"]


@pytest.fixture(scope="module")
def resnet_float32_eval():
  """Weights, images and the float32 eval-mode (logits, features), compiled once."""
  model = _resnet(10)
  variables, x = _variables(model), _images(batch=2, seed=1)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))(
      variables, x)
  return variables, x, out


def test_resnet50_shapes_features_and_batch_norm_momentum(resnet_float32_eval):
  model = _resnet(10)
  variables, x, (eval_out, feats) = resnet_float32_eval
  train_out, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"],
      capture_intermediates=lambda m, _: m.name == "conv1" and m.parent.name is None))(
          variables, x)
  for out in (train_out, eval_out):
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
  assert feats.shape == (2, 2048) and feats.dtype == jnp.float32
  assert np.all(np.asarray(feats) >= 0)  # after the final ReLU
  # torch momentum 0.1: new running mean = 0.9 * old (0) + 0.1 * batch mean.
  conv1 = np.asarray(state["intermediates"]["conv1"]["__call__"][0])
  np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"],
                             0.1 * conv1.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_resnet50_bfloat16(resnet_float32_eval):
  bf16 = _resnet(10, jnp.bfloat16)
  variables, x, (want, _) = resnet_float32_eval

  @jax.jit
  def run(variables, x):
    return bf16.apply(variables, x, train=False, return_features=True,
                      capture_intermediates=lambda m, _: m.name == "layer4_2",
                      mutable=["intermediates"])

  (logits, feats), state = run(variables, x)
  assert logits.dtype == feats.dtype == jnp.float32
  assert state["intermediates"]["layer4_2"]["__call__"][0].dtype == jnp.bfloat16
  assert np.all(np.isfinite(logits))
  scale = float(jnp.abs(want).max())
  assert float(jnp.abs(logits - want).max()) < 0.05 * scale
  assert float(jnp.abs(logits - want).max()) > 0  # it did compute in bfloat16
  # Parameters stay float32 at any computation dtype.
  assert all(s.dtype == jnp.float32
             for s in jax.tree_util.tree_leaves(_shapes(bf16, batch=1)))
