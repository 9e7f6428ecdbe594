"""Checkpoints (dlpl_jax/training/checkpoint.py): synchronous verified saves, checksummed
restores with fallback, set-aside, one-line errors. (The loop's use of them on a damaged
or foreign checkpoint: tests/training/test_loop.py.)"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dlpl_jax.training import checkpoint as ckpt_lib
from dlpl_jax.training.checkpoint import (CheckpointError, CheckpointMismatchError, Checkpointer,
                                 NonFiniteStateError)


def make_state(seed=0, channels=32, extra=False):
  """A small TrainState-like pytree; the conv kernel is large enough for its own data."""
  rng = np.random.RandomState(seed)
  params = {"conv": {"kernel": jnp.asarray(rng.randn(3, 3, 3, channels), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.randn(channels, 10), jnp.float32),
                      "bias": jnp.zeros((10,), jnp.float32)}}
  if extra:
    params["head"] = {"bias": jnp.zeros((10,), jnp.float32)}
  return {"step": jnp.asarray(seed, jnp.int32),
          "params": params,
          "opt_state": ({"trace": jax.tree_util.tree_map(jnp.zeros_like, params)},
                        {"count": jnp.asarray(7, jnp.int32)}),
          "marginal": jnp.full((10,), 0.1, jnp.float32)}


def assert_same(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def one_line(e) -> str:
  msg = str(e.value if hasattr(e, "value") else e)
  assert "\n" not in msg, msg
  return msg


def saved(tmp_path, steps, keep=5, log=None, state_for=make_state):
  ck = Checkpointer(str(tmp_path), every=1, keep=keep, log=log)
  for s in steps:
    assert ck.save(s, state_for(s), force=True)
  return ck


def data_file(ck, step) -> pathlib.Path:
  """The largest array data file of a step (OCDBT: ``.../d/<hash>``)."""
  files = [p for p in (pathlib.Path(ck.directory) / str(step) / "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  assert files, list((pathlib.Path(ck.directory) / str(step)).rglob("*"))
  return max(files, key=lambda p: p.stat().st_size)


def truncate(path: pathlib.Path):
  os.truncate(path, path.stat().st_size // 2)


def flip(path: pathlib.Path, n=64):
  b = bytearray(path.read_bytes())
  mid = len(b) // 2
  for i in range(mid, mid + n):
    b[i] ^= 0xFF
  path.write_bytes(bytes(b))


# -- saving ----------------------------------------------------------------------------

def test_round_trip_and_checksums_file(tmp_path):
  ck = saved(tmp_path, [6])
  ck.close()
  logs = []
  ck = Checkpointer(str(tmp_path), every=1, keep=5, log=logs.append)
  restored, step = ck.restore_latest(make_state(1))
  assert step == 6 and logs == []
  assert_same(restored, make_state(6))
  record = json.loads((pathlib.Path(ck.directory) / "6" / "checksums" / "metadata")
                      .read_text())
  assert record["step"] == 6 and record["algorithm"] == "crc32"
  assert set(record["arrays"]) == set(ocp.tree.to_flat_dict(make_state(), sep="/"))
  assert record["arrays"]["params/conv/kernel"]["shape"] == [3, 3, 3, 32]


def test_round_trip_train_state(tmp_path, tiny_config):
  from dlpl_jax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from dlpl_jax.training import setup  # pylint: disable=g-import-not-at-top
  spec = setup.read(tiny_config())
  mesh = mesh_lib.make_mesh()
  state = setup.new_state(spec, mesh)
  state = state.replace(marginal=state.marginal.at[0].set(0.5))
  ck = Checkpointer(str(tmp_path), every=10, keep=2)
  assert ck.save(10, state, force=True)
  assert not ck.save(10, state, force=True)  # already saved
  fresh = setup.new_state(spec, mesh)
  restored, step = ck.restore_latest(fresh)
  assert step == 10
  assert_same(restored.params, state.params)
  assert_same(restored.opt_state, state.opt_state)
  assert float(restored.marginal[0]) == 0.5
  assert restored.apply_fn is fresh.apply_fn


def test_round_trip_teacher_state(tmp_path, tiny_config):
  """A TeacherTrainState keeps its teacher's params and BN statistics."""
  from dlpl_jax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from dlpl_jax.training import setup  # pylint: disable=g-import-not-at-top
  from dlpl_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  spec = setup.read(tiny_config(teacher=True))
  mesh = mesh_lib.make_mesh()
  state = setup.new_state(spec, mesh)
  assert isinstance(state, state_lib.TeacherTrainState)
  state = state.replace(teacher_batch_stats=jax.tree_util.tree_map(
      lambda v: v + 0.25, state.teacher_batch_stats))
  ck = Checkpointer(str(tmp_path), every=1, keep=1)
  assert ck.save(2, state, force=True)
  back, step = ck.restore_latest(setup.new_state(spec, mesh))
  assert step == 2 and isinstance(back, state_lib.TeacherTrainState)
  assert_same(back.teacher_batch_stats, state.teacher_batch_stats)
  assert_same(back.teacher_params, state.teacher_params)


def test_no_checkpoints(tmp_path):
  ck = Checkpointer(str(tmp_path), every=1, keep=2)
  state = make_state()
  restored, step = ck.restore_latest(state)
  assert step is None and restored is state
  assert ck.latest_step() is None


def test_every_and_keep(tmp_path):
  ck = Checkpointer(str(tmp_path), every=2, keep=2)
  assert ck.save(2, make_state())
  assert not ck.save(3, make_state())      # not due
  assert ck.save(4, make_state())
  assert not ck.save(4, make_state(), force=True)   # already saved
  assert ck.save(5, make_state(), force=True)
  assert ck.save(6, make_state())
  assert ck.all_steps() == [5, 6] and ck.latest_step() == 6


def test_non_finite_state_is_refused(tmp_path):
  ck = Checkpointer(str(tmp_path), every=1, keep=2)
  state = make_state()
  state["params"]["dense"]["kernel"] = state["params"]["dense"]["kernel"].at[0, 0].set(
      jnp.nan)
  state["marginal"] = state["marginal"].at[1].set(jnp.inf)
  with pytest.raises(NonFiniteStateError) as e:
    ck.save(6, state, force=True)
  msg = one_line(e)
  assert "step 6" in msg and "params/dense/kernel" in msg and "marginal" in msg
  assert isinstance(e.value, CheckpointError) and isinstance(e.value, RuntimeError)
  assert ck.all_steps() == [] and os.listdir(ck.directory) == []


# -- unwritable folders ----------------------------------------------------------------

def test_parent_is_a_file(tmp_path):
  (tmp_path / "blocker").write_text("x")
  workdir = str(tmp_path / "blocker" / "run")
  with pytest.raises(CheckpointError) as e:
    Checkpointer(workdir, every=1, keep=2)
  msg = one_line(e)
  assert str(tmp_path / "blocker") in msg and "not a folder" in msg
  with pytest.raises(CheckpointError):
    ckpt_lib.check_writable(workdir)


def test_checkpoints_is_a_file(tmp_path):
  (tmp_path / "checkpoints").write_text("x")
  with pytest.raises(CheckpointError) as e:
    Checkpointer(str(tmp_path), every=1, keep=2)
  assert str(tmp_path / "checkpoints") in one_line(e)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores file permissions")
def test_read_only_folder(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  os.chmod(tmp_path / "checkpoints", 0o500)
  try:
    with pytest.raises(CheckpointError) as e:
      Checkpointer(str(tmp_path), every=1, keep=2)
    assert "Permission denied" in one_line(e)
  finally:
    os.chmod(tmp_path / "checkpoints", 0o700)


def test_failed_save_raises_at_once(tmp_path):
  ck = Checkpointer(str(tmp_path), every=1, keep=2)
  os.rmdir(ck.directory)
  pathlib.Path(ck.directory).write_text("not a folder")
  with pytest.raises(CheckpointError) as e:
    ck.save(6, make_state(), force=True)
  msg = one_line(e)
  assert msg.startswith(f"cannot write checkpoint step 6 to {ck.directory}: ")


@pytest.mark.parametrize("processes", [1, 2])
def test_failed_barrier(tmp_path, monkeypatch, processes):
  """A save whose barrier fails because another process died stays a JaxRuntimeError
  with several processes (the command line names the other process), and is a
  one-line CheckpointError with one."""
  ck = Checkpointer(str(tmp_path), every=1, keep=2)
  def barrier_fails(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("INTERNAL: Barrier failed because: task is set to ERROR")
  monkeypatch.setattr(ck.manager, "save", barrier_fails)
  monkeypatch.setattr(ckpt_lib.jax, "process_count", lambda: processes)
  expected = jax.errors.JaxRuntimeError if processes > 1 else CheckpointError
  with pytest.raises(expected, match="Barrier failed"):
    ck.save(6, make_state(), force=True)


def test_free_space_check(tmp_path, monkeypatch):
  state = make_state()
  assert ckpt_lib.check_writable(str(tmp_path), state) == str(tmp_path / "checkpoints")
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage",
                      lambda p: type("U", (), {"free": 1000})())
  with pytest.raises(CheckpointError) as e:
    ckpt_lib.check_writable(str(tmp_path), state)
  assert "not enough free space" in one_line(e)


# -- damaged checkpoints ---------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "metadata", "flip"])
def test_damaged_newest_falls_back(tmp_path, damage):
  logs = []
  ck = saved(tmp_path, [6, 12], log=logs.append)
  if damage == "truncate":
    truncate(data_file(ck, 12))
  elif damage == "metadata":
    os.remove(pathlib.Path(ck.directory) / "12" / "state" / "_METADATA")
  else:
    flip(data_file(ck, 12))
  restored, step = ck.restore_latest(make_state(0))
  assert step == 6
  assert_same(restored, make_state(6))
  assert len(logs) == 1 and "\n" not in logs[0], logs
  assert logs[0].startswith(f"checkpoint step 12 in {ck.directory} is damaged (")
  assert logs[0].endswith("; using step 6")
  if damage == "flip":
    assert "checksum mismatch in params/conv/kernel" in logs[0]
  assert ck.all_steps() == [6, 12]  # nothing deleted


def test_all_damaged(tmp_path):
  logs = []
  ck = saved(tmp_path, [6, 12], log=logs.append)
  flip(data_file(ck, 12))
  truncate(data_file(ck, 6))
  with pytest.raises(CheckpointError) as e:
    ck.restore_latest(make_state())
  msg = one_line(e)
  assert "no intact checkpoint" in msg and "step 12: checksum mismatch" in msg
  assert "step 6: " in msg and logs == []
  with pytest.raises(CheckpointError) as e:
    ck.restore(make_state(), 12)
  assert "step 12" in one_line(e) and "damaged" in str(e.value)


def test_non_finite_stored_values_fall_back(tmp_path, monkeypatch):
  """A step whose stored values are non-finite (with matching checksums: written by a
  save that did not check) is damaged; the next older one is used."""
  ck = saved(tmp_path, [6])
  scan = ckpt_lib._scan  # pylint: disable=protected-access
  monkeypatch.setattr(ckpt_lib, "_scan", lambda leaves, dtypes=None: (scan(leaves, dtypes)[0], []))
  bad = make_state(12)
  bad["marginal"] = bad["marginal"].at[0].set(jnp.nan)
  assert ck.save(12, bad, force=True)
  monkeypatch.undo()
  ck.close()
  logs = []
  ck = Checkpointer(str(tmp_path), every=1, keep=5, log=logs.append)
  restored, step = ck.restore_latest(make_state())
  assert step == 6
  assert_same(restored, make_state(6))
  assert len(logs) == 1 and "step 12" in logs[0]
  assert "non-finite values in marginal" in logs[0]
  assert ck.save(18, make_state(18), force=True)
  restored, step = ck.restore_latest(make_state())
  assert step == 18 and len(logs) == 1
  assert_same(restored, make_state(18))


def test_a_step_without_its_state_folder_is_damaged(tmp_path):
  """The pre-release single-item layout (the state directly in the step folder) is no
  longer read: such a step is damaged, and an older intact one is used."""
  ck = saved(tmp_path, [6])
  ck.close()
  mgr = ocp.CheckpointManager(str(tmp_path / "checkpoints"),
                              options=ocp.CheckpointManagerOptions(
                                  create=True, enable_async_checkpointing=False))
  mgr.save(12, args=ocp.args.StandardSave(make_state(12)))
  mgr.close()
  logs = []
  ck = Checkpointer(str(tmp_path), every=1, keep=5, log=logs.append)
  restored, step = ck.restore_latest(make_state())
  assert step == 6
  assert_same(restored, make_state(6))
  assert len(logs) == 1 and "checkpoint step 12" in logs[0]
  assert "no 'state' folder" in logs[0] and logs[0].endswith("; using step 6")


# -- another model ---------------------------------------------------------------------

def test_shape_mismatch(tmp_path):
  logs = []
  ck = saved(tmp_path, [6, 12], log=logs.append)
  with pytest.raises(CheckpointMismatchError) as e:
    ck.restore_latest(make_state(channels=16))
  msg = one_line(e)
  assert msg.startswith(f"the checkpoint at step 12 in {ck.directory} holds a different")
  assert "params/conv/kernel: stored (3,3,3,32), expected (3,3,3,16)" in msg
  assert logs == []
  with pytest.raises(CheckpointMismatchError) as e:
    ck.restore_latest(make_state(extra=True))
  assert "params/head/bias: not in the checkpoint" in one_line(e)


# -- a chosen step, set aside ----------------------------------------------------------

def test_restore_step_and_set_aside(tmp_path):
  ck = saved(tmp_path, [6, 12, 18])
  assert_same(ck.restore(make_state(), 12), make_state(12))
  with pytest.raises(CheckpointError) as e:
    ck.restore(make_state(), 7)
  assert "saved steps: 6, 12, 18" in one_line(e)

  assert ck.set_aside_after(6) == [12, 18]
  aside = pathlib.Path(ck.directory) / "set_aside"
  assert sorted(os.listdir(aside)) == ["12", "18"]
  assert ck.all_steps() == [6] and ck.latest_step() == 6
  assert ck.set_aside_after(6) == []
  assert ck.save(12, make_state(120), force=True)   # the step can be written again
  ck.close()

  ck = Checkpointer(str(tmp_path), every=1, keep=5)
  assert ck.all_steps() == [6, 12]
  restored, step = ck.restore_latest(make_state())
  assert step == 12
  assert_same(restored, make_state(120))
  assert ck.set_aside_after(6) == [12]
  assert sorted(os.listdir(aside)) == ["12", "12.1", "18"]
  assert_same(ck.restore_latest(make_state())[0], make_state(6))
