"""Data parallelism (dlpl_jax/training/mesh.py): the 1-D ``"data"`` mesh, replicated
state, sharded batches; and the step and evaluation on 2 devices equal to 1 device."""

import json
import os
import textwrap

import jax
from jax.sharding import PartitionSpec as P
import numpy as np

from dlpl_jax import configs
from dlpl_jax.training import mesh as mesh_lib


def test_make_mesh():
  mesh = mesh_lib.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.size == len(jax.devices())
  assert mesh_lib.make_mesh(jax.devices()[:1]).size == 1
  assert mesh_lib.make_mesh() == mesh  # equal meshes: jit's caches hit


def test_replicate_places_the_same_values_everywhere():
  mesh = mesh_lib.make_mesh()
  tree = {"x": np.arange(6, dtype=np.uint8).reshape(2, 3), "y": [np.float32(1.5)]}
  out = mesh_lib.replicate(tree, mesh)
  assert out["x"].dtype == np.uint8 and out["x"].sharding.is_fully_replicated
  assert out["x"].sharding.spec == P()
  np.testing.assert_array_equal(out["x"], tree["x"])
  assert float(out["y"][0]) == 1.5


def test_shard_is_a_no_op_without_a_mesh():
  """(Its sharding on 2 devices: test_two_devices_equal_one_device.)"""
  x = np.ones((4, 2), np.float32)
  assert mesh_lib.shard(x, None) is x
  mesh = mesh_lib.make_mesh()
  np.testing.assert_array_equal(jax.jit(lambda a: mesh_lib.shard(a * 2, mesh))(x), 2 * x)


def test_from_processes_one_process_is_the_batch_itself():
  mesh = mesh_lib.make_mesh()
  batch = {"weak": np.arange(2 * 4 * 3).reshape(2, 4, 3), "label": np.arange(4)}
  g = mesh_lib.from_processes(batch, mesh, {"weak": 1})
  assert g["weak"].sharding.spec == P(None, "data") and g["label"].sharding.spec == P("data")
  np.testing.assert_array_equal(g["weak"], batch["weak"])
  np.testing.assert_array_equal(g["label"], batch["label"])


_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, ml_collections, numpy as np
    from jax.sharding import PartitionSpec as P
    from dlpl_jax.data import in_memory
    from dlpl_jax.training import mesh as mesh_lib, setup
    assert len(jax.devices()) == 2, jax.devices()
    spec = setup.read(ml_collections.ConfigDict(json.loads(sys.argv[1])))
    data = in_memory.synthetic(labeled_per_class=2, unlabeled=64, test=64)
    out = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = mesh_lib.make_mesh(devices)
      inp = setup.make_input(spec, mesh, data)
      state = setup.new_state(spec, mesh)
      for _ in range(2):
        state, metrics = inp.step(state)
      assert all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(state))
      ev = inp.evaluate(state)
      out.append(jax.device_get((state.params, state.batch_stats, state.ema_params,
                                 state.marginal, state.confusion, metrics,
                                 ev["class_features"], ev["eval/predicted"])))
      print(len(devices), "device(s): marginal", np.round(out[-1][3], 5))
    for a, b in zip(jax.tree_util.tree_leaves(out[0]), jax.tree_util.tree_leaves(out[1])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Inside jit, shard splits the batch axis over the devices.
    x = np.ones((4, 2), np.float32)
    rows = jax.jit(lambda a: mesh_lib.shard(a * 2, mesh))(x)
    cols = jax.jit(lambda a: mesh_lib.shard(a * 2, mesh, axis=1))(x)
    assert rows.sharding.spec == P("data") and cols.sharding.spec == P(None, "data")
    np.testing.assert_array_equal(rows, 2 * x)
    # A process's part of a batch of views is split along its batch axis (1).
    g = mesh_lib.from_processes({"weak": np.zeros((2, 4, 3)), "label": np.arange(4)}, mesh,
                                {"weak": 1})
    assert g["weak"].sharding.spec == P(None, "data"), g["weak"].sharding
    assert [s.data.shape for s in g["weak"].addressable_shards] == [(2, 2, 3)] * 2
    assert [s.data.shape for s in g["label"].addressable_shards] == [(2,)] * 2
    print("OK")
    """)


def test_two_devices_equal_one_device(python, tiny_config):
  """The tiny config's input stage, two steps and an evaluation on a mesh of 2 (host)
  devices equal those on 1 device: batch-norm statistics, losses and the marginal are
  over the global batch."""
  flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  res = python(["-c", _TWO_DEVICES, json.dumps(configs.to_dict(tiny_config()))],
               env={"XLA_FLAGS": flags.strip()}, timeout=600)
  assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr[-3000:]
