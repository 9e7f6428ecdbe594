"""dlpl_jax.models.weights: variables files written and read (msgpack, and the .npz the
trainer's init_checkpoint also takes), checked against a model naming the first
mismatch, and merged into the model's fresh initialisation."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax import models
from dlpl_jax.errors import UsageError
from dlpl_jax.models import weights


@pytest.fixture(scope="module")
def shapes():
  """The ResNet-50's (10 classes) variables as ShapeDtypeStructs."""
  return _model_shapes(10)


def _model_shapes(num_classes):
  model = models.create_model("resnet50", num_classes)
  x = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _filled(shapes, value=0.0):
  """Concrete numpy variables of the given shapes (nested plain dicts)."""
  return jax.tree.map(lambda s: np.full(s.shape, value, np.float32),
                      flax.core.unfreeze(shapes))


def test_check_variables_names_first_mismatch(shapes):
  variables = _filled(shapes)
  assert weights.check_variables(variables, shapes) == []
  variables["batch_stats"]["layer4_2"]["bn3"]["mean"] = np.zeros(7, np.float32)
  with pytest.raises(weights.WeightsError,
                     match=r"batch_stats/layer4_2/bn3/mean: shape \(7,\)"):
    weights.check_variables(variables, shapes)
  del variables["batch_stats"]["layer4_2"]["bn3"]["mean"]
  with pytest.raises(weights.WeightsError, match="batch_stats/layer4_2/bn3/mean: "
                     "the model has it"):
    weights.check_variables(variables, shapes)
  variables = _filled(shapes)
  variables["params"]["extra"] = {"kernel": np.zeros(3, np.float32)}
  with pytest.raises(weights.WeightsError,
                     match="params/extra/kernel: in the loaded variables but not in the model"):
    weights.check_variables(variables, shapes)
  assert issubclass(weights.WeightsError, UsageError)


def test_class_count_mismatch_and_drop_classifier(shapes):
  loaded = _filled(_model_shapes(1000))
  with pytest.raises(weights.WeightsError,
                     match=r"params/classifier/bias: shape \(1000,\).*\(10,\).*drop_fc"):
    weights.check_variables(loaded, shapes)
  dropped = weights.drop_classifier(loaded)
  assert "classifier" not in dropped["params"] and "classifier" in loaded["params"]
  assert weights.check_variables(dropped, shapes) == [
      "params/classifier/bias", "params/classifier/kernel"]


def test_init_variables_keeps_the_classifier_init(shapes):
  """Everything from the file but the classifier, which keeps the model's init; the
  reference's dtypes are kept."""
  loaded = weights.drop_classifier(_filled(shapes, 3.0))
  loaded["batch_stats"]["bn1"]["var"] = np.arange(64, dtype=np.float64)
  reference = jax.tree.map(lambda s: jnp.full(s.shape, 7.0, s.dtype), shapes)
  reference["params"]["classifier"] = {"kernel": jnp.ones((2048, 10)),
                                       "bias": jnp.zeros(10)}
  merged = weights.init_variables(reference, loaded)
  np.testing.assert_array_equal(merged["params"]["classifier"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged["params"]["conv1"]["kernel"], 3.0)
  np.testing.assert_array_equal(merged["batch_stats"]["bn1"]["var"], np.arange(64))
  assert merged["batch_stats"]["bn1"]["var"].dtype == jnp.float32
  with pytest.raises(weights.WeightsError, match="the model has it"):
    del loaded["params"]["conv1"]
    weights.init_variables(reference, loaded)


def test_save_and_load(tmp_path):
  variables = {"params": {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
                          "bias": np.ones(3, np.float32)},
               "batch_stats": {"bn": {"mean": np.zeros(3, np.float32)}}}
  path = str(tmp_path / "v.msgpack")
  weights.save_variables(variables, path)
  assert os.listdir(tmp_path) == ["v.msgpack"]  # the temporary file was renamed
  jax.tree.map(np.testing.assert_array_equal, weights.load_variables(path), variables)
  (tmp_path / "junk.msgpack").write_bytes(b"not msgpack at all")
  with pytest.raises(weights.WeightsError, match="not a flax msgpack file"):
    weights.load_variables(str(tmp_path / "junk.msgpack"))
  with pytest.raises(weights.WeightsError, match="cannot read"):
    weights.load_variables(str(tmp_path / "absent.msgpack"))
  weights.save_variables({"batch_stats": {}, "other": {"x": np.zeros(1)}},
                         str(tmp_path / "no_params.msgpack"))
  with pytest.raises(weights.WeightsError, match="no 'params' collection"):
    weights.load_variables(str(tmp_path / "no_params.msgpack"))
  # Without batch_stats (a model without BatchNorm): an empty collection.
  weights.save_variables({"params": variables["params"]}, path)
  assert weights.load_variables(path)["batch_stats"] == {}


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
  outdir = tmp_path / "outdir"
  outdir.mkdir()
  variables = {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}
  with pytest.raises(IsADirectoryError):
    weights.save_variables(variables, str(outdir))
  assert not os.path.exists(f"{outdir}.tmp")
  assert os.listdir(tmp_path) == ["outdir"]


def test_load_variables_file(tmp_path):
  """An .npz keyed by the /-joined Flax paths, or a msgpack file."""
  variables = {"params": {"conv": {"kernel": np.ones((2, 3), np.float32)}},
               "batch_stats": {"bn": {"mean": np.zeros(3, np.float32)}}}
  npz_path = tmp_path / "init.npz"
  np.savez(npz_path, **{"params/conv/kernel": variables["params"]["conv"]["kernel"],
                        "batch_stats/bn/mean": variables["batch_stats"]["bn"]["mean"]})
  jax.tree.map(np.testing.assert_array_equal,
               weights.load_variables_file(str(npz_path)), variables)
  weights.save_variables(variables, str(tmp_path / "init.msgpack"))
  jax.tree.map(np.testing.assert_array_equal,
               weights.load_variables_file(str(tmp_path / "init.msgpack")), variables)
  with pytest.raises(UsageError, match="init_checkpoint .*absent.npz' is not a file"):
    weights.load_variables_file(str(tmp_path / "absent.npz"))
  np.savez(npz_path, **{"conv1.weight": np.zeros(3)})  # a PyTorch state dict
  with pytest.raises(UsageError, match="keys such as 'conv1.weight' are not Flax variable "
                     "paths .*dlpl-convert"):
    weights.load_variables_file(str(npz_path))
  npz_path.write_bytes(b"junk")
  with pytest.raises(UsageError, match="init_checkpoint: .*init.npz is not a valid .npz"):
    weights.load_variables_file(str(npz_path))
