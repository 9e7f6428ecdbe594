"""Set-up (dlpl_jax/training/setup.py): the config read once into typed pieces (and
refused, before any data, when it cannot train), the device and CPU-budget checks, the
fresh state with or without initial weights, the input."""

import dataclasses

import flax
import jax
import numpy as np
import pytest

from dlpl_jax import configs
from dlpl_jax.data import in_memory
from dlpl_jax.errors import UsageError
from dlpl_jax.training import checkpoint
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup
from dlpl_jax.training import state as state_lib
from dlpl_jax.training.step import StepConfig


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items()}


# --- read(config) -> Spec ---------------------------------------------------------------


class TestRead:

  def test_the_tiny_config_as_typed_pieces(self, tiny_config):
    c = tiny_config()
    spec = setup.read(c)
    assert spec.config == configs.to_dict(c) and spec.method == "debiaspl"
    assert spec.model == ("cnn_small", 10, "float32")
    assert spec.optimizer == state_lib.OptimizerConfig(
        lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4, total_steps=4,
        schedule="fixmatch", cosine_factor=7 / 16, warmup_steps=0, update_every=1,
        decay_all=False)
    assert spec.step == StepConfig(
        num_classes=10, batch_size=4, mu=2, tau=0.4, threshold=0.5, marginal_momentum=0.9,
        lambda_u=1.0, ema_decay=0.999, seed=0)
    assert spec.step.mesh is None and spec.step.clip_fallback == 0.0
    assert spec.loop == setup.LoopConfig(total_steps=4, log_every=1, eval_every=2,
                                         checkpoint_every=2, keep_checkpoints=3,
                                         progress=False)
    assert spec.data == in_memory.DataSpec("cifar10", 10, "", 4, 0, None, 0)
    assert not spec.streamed and spec.imagenet is None
    assert spec.eval_params == "ema" and spec.eval_batch_size == 64
    assert spec.init_checkpoint == "" and spec.image_shape == (32, 32, 3)
    assert spec.class_names[0] == "airplane" and spec.class_names[-1] == "truck"
    hash(spec.step)  # static for jit

  def test_fixmatch_method_uses_tau_zero(self, tiny_config):
    assert setup.read(tiny_config(method="fixmatch")).step.tau == 0.0
    assert setup.read(tiny_config(tau=0.7)).step.tau == 0.7

  def test_the_recipe_options_reach_the_step_and_the_optimizer(self, tiny_config):
    spec = setup.read(tiny_config(
        teacher=True, teacher_momentum=0.99, num_views=2, cld_weight=0.3,
        cld_temperature=0.1, lr_schedule="warmup_cosine", warmup_steps=2, lr_update_every=2,
        weight_decay_all=True, nesterov=False, in_memory=False))
    s, o = spec.step, spec.optimizer
    assert (s.teacher, s.teacher_momentum, s.num_views, s.cld_weight, s.cld_temperature) == (
        True, 0.99, 2, 0.3, 0.1)
    assert (o.schedule, o.warmup_steps, o.update_every, o.decay_all, o.nesterov) == (
        "warmup_cosine", 2, 2, True, False)
    assert spec.streamed

  def test_long_tail_reaches_the_data_spec(self, tiny_config):
    spec = setup.read(tiny_config(**{"lt.enabled": True, "lt.n1": 100, "lt.m1": 200,
                                     "lt.gamma": 10.0}))
    assert spec.data.lt == in_memory.LongTail(100, 200, 10.0, "long_tailed")

  def test_the_base_config_has_every_recipe_option_off(self):
    c = configs.get_base_config()
    for k, v in configs.RECIPE_DEFAULTS.items():
      assert c[k] == v, k
    spec = setup.read(c)
    assert not spec.step.teacher and spec.step.num_views == 1
    assert spec.step.cld_weight == 0.0 and spec.step.clip_fallback == 0.0
    assert spec.optimizer.schedule == "fixmatch" and not spec.optimizer.decay_all

  def test_the_clip_split_turns_the_fallback_on(self, imagenet_config, tmp_path):
    (tmp_path / "x.npz").write_bytes(b"")  # read() checks that it is a file, not its data
    c = imagenet_config("imagenet_clip_zeroshot", "smoke",
                        **{"imagenet.clip_labeled": str(tmp_path / "x.npz")})
    spec = setup.read(c)
    assert spec.step.clip_fallback == 0.3 and spec.step.num_views == 2 and spec.step.teacher
    assert spec.data is None and spec.imagenet.split == "clip"
    assert spec.image_shape == (c.imagenet.crop_size,) * 2 + (3,)
    assert setup.read(imagenet_config()).step.clip_fallback == 0.0


class TestReadRefuses:

  @pytest.mark.parametrize("key,value,match", [
      ("method", "mixmatch", "method must be one of"),
      ("num_views", 0, "num_views must be an integer >= 1"),
      ("teacher_momentum", 1.5, r"teacher_momentum must be a finite number in \[0, 1\]"),
      ("cld_weight", -0.1, "cld_weight must be a finite number >= 0"),
      ("cld_temperature", 0.0, "cld_temperature must be a finite number > 0"),
      ("lr_schedule", "step", "lr_schedule must be one of"),
      ("warmup_steps", 5, "apply to lr_schedule='warmup_cosine' only"),
  ])
  def test_bad_values(self, tiny_config, key, value, match):
    with pytest.raises(UsageError, match=match):
      setup.read(tiny_config(**{key: value}))

  def test_an_unknown_key_fails_at_once(self, tiny_config):
    with pytest.raises((AttributeError, KeyError), match="does not exist"):
      tiny_config(lables_per_class=4)

  def test_warmup_must_end_before_training(self, tiny_config):
    with pytest.raises(UsageError, match="below total_steps"):
      setup.read(tiny_config(total_steps=8, lr_schedule="warmup_cosine", warmup_steps=8))
    setup.read(tiny_config(total_steps=8, lr_schedule="warmup_cosine", warmup_steps=7,
                           lr_update_every=2))

  def test_streaming_with_long_tail(self, tiny_config):
    with pytest.raises(UsageError, match="need in_memory=True"):
      setup.read(tiny_config(in_memory=False, **{"lt.enabled": True}))

  def test_a_missing_init_file_is_refused_when_it_is_read(self, tiny_config, tmp_path):
    """validate() names it; read() leaves it to new_state (a resume never reads it)."""
    c = tiny_config(init_checkpoint="/nonexistent/w.npz")
    with pytest.raises(UsageError, match="is not a file"):
      configs.validate(c)
    spec = setup.read(c)
    with pytest.raises(UsageError, match=r"init_checkpoint = '/nonexistent/w.npz' is not a file"):
      setup.new_state(spec, mesh_lib.make_mesh())
    assert int(setup.new_state(spec, mesh_lib.make_mesh(), read_init=False).step) == 0


# --- devices and the CPU budget ---------------------------------------------------------


class _Mesh:
  def __init__(self, size):
    self.size = size


class TestCheckDevices:

  def test_batches_the_devices_do_not_divide(self, tiny_config):
    spec = setup.read(tiny_config())
    setup.check_devices(spec, _Mesh(4), True, print)
    with pytest.raises(UsageError, match=r"batch_size = 4 must be divisible by the 3 devices"):
      setup.check_devices(spec, _Mesh(3), True, print)
    spec = setup.read(tiny_config(eval_batch_size=10))
    with pytest.raises(UsageError, match=r"eval_batch_size = 10 must be divisible by the 4"):
      setup.check_devices(spec, _Mesh(4), True, print)

  def test_runtime_estimate(self, tiny_config):
    assert setup.runtime_estimate(setup.read(tiny_config())) is None  # the small CNN
    spec = setup.read(configs.get_base_config())  # WRN-28-2, 2^20 steps of 64 + 2 * 448
    cpu, h100 = setup.runtime_estimate(spec)
    images = 2**20 * 64 * 15
    assert cpu == pytest.approx(images * 11.9 / 960 / 3600)
    assert h100 == pytest.approx(images / (87 * 960) / 3600)

  def test_a_heavy_config_is_refused_on_cpu(self):
    spec = setup.read(configs.get_base_config())
    mesh = mesh_lib.make_mesh()
    with pytest.raises(UsageError, match=r"needs a GPU/TPU.*--allow_cpu") as e:
      setup.check_devices(spec, mesh, False, print)
    msg = str(e.value)
    assert "h on one H100" in msg and "days on this CPU" in msg and "\n" not in msg
    notes = []
    setup.check_devices(spec, mesh, True, notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: this config trains wrn28_2 for "
                                                   "1,048,576 steps")


# --- the fresh state --------------------------------------------------------------------


class TestNewState:

  def test_fresh_and_replicated(self, tiny_config):
    spec = setup.read(tiny_config())
    state = setup.new_state(spec, mesh_lib.make_mesh())
    assert type(state) is state_lib.TrainState and int(state.step) == 0
    assert all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(state))
    assert state.apply_fn == setup.build_model(spec.model).apply
    assert state.tx is state_lib.make_optimizer(spec.optimizer)
    assert setup.build_model(spec.model) is setup.build_model(("cnn_small", 10, "float32"))
    np.testing.assert_array_equal(state.marginal, np.full(10, 0.1, np.float32))
    other = setup.new_state(spec, mesh_lib.make_mesh(), image_shape=(16, 16, 3))
    assert set(_flat(other.params)) == set(_flat(state.params))  # the same model

  def _file_variables(self, spec):
    """Random backbone variables of the model, without its classifier (as a
    self-supervised checkpoint)."""
    fresh = setup.new_state(spec, mesh_lib.make_mesh())
    rng = np.random.default_rng(4)
    flat = {f"params/{k}": rng.normal(size=v.shape).astype(np.float32)
            for k, v in _flat(fresh.params).items() if not k.startswith("classifier")}
    flat.update({f"batch_stats/{k}": rng.uniform(0.5, 2, size=v.shape).astype(np.float32)
                 for k, v in _flat(fresh.batch_stats).items()})
    return fresh, flat

  @pytest.mark.parametrize("kind", ["npz", "msgpack"])
  def test_loads_exactly_the_files_arrays(self, tmp_path, tiny_config, kind):
    c = tiny_config(teacher=True)
    fresh, flat = self._file_variables(setup.read(c))
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
    state = setup.new_state(setup.read(c), mesh_lib.make_mesh())
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
  def test_wrong_file_refused(self, tmp_path, tiny_config, change, match):
    spec = setup.read(tiny_config())
    _, flat = self._file_variables(spec)
    flat = {k: v for k, v in {**flat, **change}.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **flat)
    spec = dataclasses.replace(spec, init_checkpoint=str(tmp_path / "bad.npz"))
    with pytest.raises(UsageError, match=match) as e:
      setup.new_state(spec, mesh_lib.make_mesh())
    assert "init_checkpoint" in str(e.value) and "\n" not in str(e.value)

  def test_a_file_that_is_no_npz_is_named_as_such(self, tmp_path, tiny_config):
    """Not numpy's hint to allow pickle: the file is simply not an .npz of arrays."""
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive at all")
    spec = setup.read(tiny_config(init_checkpoint=str(tmp_path / "junk.npz")))
    with pytest.raises(UsageError, match=r"init_checkpoint: .*junk.npz is not a valid "
                                         r"\.npz of arrays") as e:
      setup.new_state(spec, mesh_lib.make_mesh())
    assert "pickle" not in str(e.value)

  def test_a_resume_keeps_the_checkpoint_not_the_file(self, tmp_path, tiny_config):
    spec = setup.read(tiny_config())
    _, flat = self._file_variables(spec)
    np.savez(tmp_path / "w.npz", **flat)
    spec = dataclasses.replace(spec, init_checkpoint=str(tmp_path / "w.npz"))
    mesh = mesh_lib.make_mesh()
    saved = setup.new_state(spec, mesh)
    np.testing.assert_array_equal(_flat(saved.params)["conv0/kernel"],
                                  flat["params/conv0/kernel"])
    saved = saved.replace(params=jax.tree_util.tree_map(lambda p: p + 1.0, saved.params))
    ck = checkpoint.Checkpointer(str(tmp_path / "run"), every=1, keep=1)
    ck.save(3, saved, force=True)
    # What the loop does: create the state (the file is not read), then restore.
    (tmp_path / "w.npz").unlink()  # it may have moved since
    back, _ = ck.restore_latest(setup.new_state(spec, mesh, read_init=False))
    np.testing.assert_array_equal(_flat(back.params)["conv0/kernel"],
                                  flat["params/conv0/kernel"] + 1.0)


# --- the input --------------------------------------------------------------------------


def test_make_input_in_memory(tiny_config, tiny_data):
  spec = setup.read(tiny_config())
  mesh = mesh_lib.make_mesh()
  inp = setup.make_input(spec, mesh, tiny_data)
  assert inp.describe == ("data: labeled 20 (per class [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]), "
                          "unlabeled 64 (per class [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]), test 64")
  state = setup.new_state(spec, mesh)
  new, metrics = inp.step(state)
  assert int(new.step) == 1 and np.isfinite(float(metrics["train/loss"]))
  ev = inp.evaluate(new)
  assert set(ev) == {"eval/top1", "eval/per_class", "eval/predicted", "class_features"}
  assert sum(ev["eval/predicted"]) == 64 and ev["class_features"].shape == (10, 128)
  # The EMA is evaluated, not the student.
  zeros = lambda tree: jax.tree_util.tree_map(lambda p: p * 0, tree)
  same = inp.evaluate(new.replace(params=zeros(new.params)))
  assert same["eval/predicted"] == ev["eval/predicted"]
  np.testing.assert_array_equal(same["class_features"], ev["class_features"])
  blank = inp.evaluate(new.replace(ema_params=zeros(new.ema_params)))
  assert blank["eval/predicted"] == [64] + [0] * 9  # all logits 0: class 0
