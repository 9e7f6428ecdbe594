"""Tests of the ResNet-50 in dlpl_jax.models: size, layout, shapes, BatchNorm, bfloat16.

The model is never initialised here (a 25M-parameter init costs ~10 s on one CPU
core): shapes come from ``jax.eval_shape`` and weights from NumPy. Its equality with
torch's arithmetic is tested in tests/test_convert.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax import models

TORCHVISION_RESNET50_PARAMS = 25_557_032  # sum(p.numel()) of torchvision resnet50()


def _shapes(num_classes, size=32, dtype=jnp.float32):
  model = models.create_model("resnet50", num_classes, dtype)
  x = jnp.zeros((1, size, size, 3), jnp.uint8)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _variables(num_classes, seed=0):
  """Random weights of the model's shapes: He-normal kernels, BN at identity."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(s.shape[:-1])
      return (rng.normal(size=s.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    if name in ("scale", "var"):
      return np.ones(s.shape, np.float32)
    return np.zeros(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, _shapes(num_classes))


def _images(batch=2, size=32, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3),
                                              dtype=np.uint8)


def test_parameter_count_equals_torchvision():
  shapes = _shapes(1000)
  assert models.param_count(shapes["params"]) == TORCHVISION_RESNET50_PARAMS
  # 53 BatchNorms (stem, 16 blocks x 3, 4 downsample) carry running statistics.
  assert len(jax.tree_util.tree_leaves(shapes["batch_stats"])) == 2 * 53
  assert "resnet50" in models.MODEL_NAMES


def test_layout_at_224():
  """torchvision's sizes: 112 after conv1, 56 after the pool, 7x7x2048 at the end;
  stride on conv2 (3x3) of the first block of stages 2-4, none on conv1 (1x1)."""
  model = models.create_model("resnet50", 1000)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.uint8)
  out, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                               mutable=["intermediates"]), _shapes(1000), x)
  inter = state["intermediates"]
  size = lambda *path: _get(inter, path + ("__call__",))[0].shape  # noqa: E731
  assert size("conv1") == (1, 112, 112, 64)
  assert size("layer1_0") == (1, 56, 56, 256)
  assert size("layer2_0", "conv1") == (1, 56, 56, 128)
  assert size("layer2_0", "conv2") == (1, 28, 28, 128)
  assert size("layer2_0", "downsample_0") == (1, 28, 28, 512)
  assert size("layer4_2") == (1, 7, 7, 2048)
  assert out.shape == (1, 1000)
  params = _shapes(1000)["params"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert params["layer3_0"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
  assert params["classifier"]["kernel"].shape == (2048, 1000)
  assert "downsample_0" not in params["layer1_1"]


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


@pytest.fixture(scope="module")
def float32_eval():
  """Weights, images and the float32 eval-mode (logits, features), compiled once."""
  model = models.create_model("resnet50", 10)
  variables, x = _variables(10), _images()
  out = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))(
      variables, x)
  return variables, x, out


def test_shapes_features_and_batch_norm_momentum(float32_eval):
  model = models.create_model("resnet50", 10)
  variables, x, (eval_out, feats) = float32_eval
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


def test_bfloat16(float32_eval):
  bf16 = models.create_model("resnet50", 10, jnp.bfloat16)
  variables, x, (want, _) = float32_eval

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
             for s in jax.tree_util.tree_leaves(_shapes(10, dtype=jnp.bfloat16)))
