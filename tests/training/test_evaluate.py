"""Evaluation (dlpl_jax/training/evaluate.py) against NumPy, with a fake model whose
logits are pixel values: top-1 per class, predicted counts, class-mean features, padding,
EMA vs student weights, device-resident vs streamed test sets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax.training import evaluate as evaluate_lib
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import metrics as metrics_lib
from dlpl_jax.training import state as state_lib

C = 4


class PixelLogits(nn.Module):
  """Logits = the first C pixel values + a bias (- the running mean in eval mode);
  features = twice those pixel values."""
  num_classes: int = C

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    z = x.reshape(x.shape[0], -1)[:, :self.num_classes].astype(jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (self.num_classes,))
    logits = z + bias - (0.0 if train else mean.value)
    return (logits, 2 * z) if return_features else logits


MODEL = PixelLogits()


def _data(n, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 1, 2, 3)).astype(np.uint8)
  y = rng.integers(0, C, n).astype(np.int32)
  return x, y


def _state(bias=(0.0, 0.0, 0.0, 0.0), ema_bias=None, mean=(0.0,) * C):
  s = state_lib.create_train_state(MODEL, state_lib.make_optimizer(
      state_lib.OptimizerConfig(lr=0.1)), seed=0, image_shape=(1, 2, 3))
  return s.replace(params={"bias": jnp.asarray(bias, jnp.float32)},
                   ema_params={"bias": jnp.asarray(bias if ema_bias is None else ema_bias,
                                                   jnp.float32)},
                   batch_stats={"mean": jnp.asarray(mean, jnp.float32)})


def _np_eval(x, y, bias, mean):
  z = x.reshape(len(x), -1)[:, :C].astype(np.float64)
  pred = np.argmax(z + np.asarray(bias) - np.asarray(mean), -1)
  count = np.bincount(y, minlength=C)
  correct = np.bincount(y[pred == y], minlength=C)
  feats = np.stack([2 * z[y == c].mean(0) if count[c] else np.zeros(C) for c in range(C)])
  with np.errstate(invalid="ignore", divide="ignore"):
    per_class = np.where(count > 0, 100.0 * correct / count, np.nan)
  return 100.0 * correct.sum() / len(y), per_class, np.bincount(pred, minlength=C), feats


def test_pad_test_set():
  x, y = _data(10)
  xp, yp = evaluate_lib.pad_test_set(x, y, 4)
  assert xp.shape == (12, 1, 2, 3) and xp.dtype == np.uint8
  np.testing.assert_array_equal(xp[:10], x)
  np.testing.assert_array_equal(xp[10:], 0)
  np.testing.assert_array_equal(yp, np.concatenate([y, [-1, -1]]))
  xs, ys = evaluate_lib.pad_test_set(x, y, 5)
  assert xs is x and ys is y


@pytest.mark.parametrize("which", ["ema", "student"])
def test_evaluate_equals_numpy(which):
  """10 images in batches of 4 on the mesh; the padding is not counted; the EMA or the
  student's params (with the student's BN statistics) are evaluated."""
  x, y = _data(10)
  params, ema = (0.0, 40.0, 0.0, 0.0), (0.0, 0.0, 0.0, 80.0)
  mean = (10.0, 0.0, 5.0, 0.0)
  state = _state(params, ema, mean)
  mesh = mesh_lib.make_mesh()
  xt, yt = mesh_lib.replicate(evaluate_lib.pad_test_set(x, y, 4), mesh)
  ev = evaluate_lib.evaluate(state, xt, yt, model=MODEL, batch=4, mesh=mesh, params=which)
  top1, per_class, predicted, feats = _np_eval(x, y, ema if which == "ema" else params, mean)
  assert ev["eval/top1"] == pytest.approx(top1)
  np.testing.assert_allclose(ev["eval/per_class"], per_class)
  assert ev["eval/predicted"] == predicted.tolist() and sum(ev["eval/predicted"]) == 10
  np.testing.assert_allclose(ev["class_features"], feats, rtol=1e-6)


def test_eval_variables():
  state = _state((1.0,) * C, (2.0,) * C)
  assert float(evaluate_lib.eval_variables(state)["params"]["bias"][0]) == 2.0
  assert float(evaluate_lib.eval_variables(state, "student")["params"]["bias"][0]) == 1.0
  assert evaluate_lib.eval_variables(state)["batch_stats"] is state.batch_stats
  with pytest.raises(ValueError, match="eval params must be 'ema' or 'student'"):
    evaluate_lib.eval_variables(state, "teacher")


def test_a_class_without_test_images_is_null_not_zero():
  """A small eval subset (3 images) leaves classes out: their accuracy is undefined
  (NaN, written as JSON null), the others are per class."""
  x, y = _data(3, seed=1)
  y = np.array([0, 0, 2], np.int32)
  mesh = mesh_lib.make_mesh()
  xt, yt = mesh_lib.replicate(evaluate_lib.pad_test_set(x, y, 4), mesh)
  ev = evaluate_lib.evaluate(_state(), xt, yt, model=MODEL, batch=4, mesh=mesh)
  written = metrics_lib.to_json(ev["eval/per_class"])
  assert [c for c, v in enumerate(written) if v is not None] == [0, 2]
  np.testing.assert_allclose(ev["class_features"][1], 0.0)


def test_streamed_batches_equal_the_device_resident_set():
  x, y = _data(10, seed=2)
  state = _state((0.0, 30.0, 0.0, 0.0))
  mesh = mesh_lib.make_mesh()
  xp, yp = evaluate_lib.pad_test_set(x, y, 4)
  resident = evaluate_lib.evaluate(state, *mesh_lib.replicate((xp, yp), mesh), model=MODEL,
                                   batch=4, mesh=mesh)
  batches = [{"image": xp[i:i + 4], "label": yp[i:i + 4].astype(np.int64)}
             for i in range(0, 12, 4)]
  streamed = evaluate_lib.evaluate_batches(state, iter(batches), model=MODEL, batch=4,
                                           mesh=mesh)
  assert streamed["eval/top1"] == resident["eval/top1"]
  assert streamed["eval/predicted"] == resident["eval/predicted"]
  np.testing.assert_array_equal(streamed["eval/per_class"], resident["eval/per_class"])
  np.testing.assert_array_equal(streamed["class_features"], resident["class_features"])


def test_summarize_adds_the_batches():
  one = {"correct": jnp.array([1.0, 0.0]), "count": jnp.array([2.0, 0.0]),
         "predicted": jnp.array([1.0, 1.0]), "feature_sum": jnp.array([[2.0], [0.0]])}
  two = {"correct": jnp.array([1.0, 0.0]), "count": jnp.array([2.0, 0.0]),
         "predicted": jnp.array([2.0, 0.0]), "feature_sum": jnp.array([[6.0], [0.0]])}
  s = evaluate_lib.summarize([one, two])
  assert s["eval/predicted"] == [3, 1]
  assert s["eval/per_class"][0] == 50.0 and np.isnan(s["eval/per_class"][1])
  np.testing.assert_array_equal(s["class_features"], [[2.0], [0.0]])
  assert jax.tree_util.tree_structure(s) == jax.tree_util.tree_structure(
      evaluate_lib.summarize([one]))


def test_top1_of_a_subset_without_some_classes_counts_the_images_only():
  s = evaluate_lib.summarize([{"correct": jnp.array([2.0, 0.0]),
                               "count": jnp.array([4.0, 0.0]),
                               "predicted": jnp.array([4.0, 0.0]),
                               "feature_sum": jnp.zeros((2, 1))}])
  assert s["eval/top1"] == 50.0  # 2 of the 4 images (not 2 / 5: an empty class adds none)
