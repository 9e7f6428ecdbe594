"""Every option of the ImageNet recipe at once (EMA teacher, two views, CLD, warm-up cosine,
weight decay on every parameter, initial weights from a file) in the trainer on the tiny
config: an interrupted and resumed run ends in the uninterrupted run's state, teacher
included, without reading the initial weights again. (Each option on its own, against
NumPy: tests/training/test_step.py, test_state.py, test_setup.py.)"""

import json

import flax
import jax
import numpy as np

from dlpl_jax import configs
from dlpl_jax.training import checkpoint
from dlpl_jax.training import loop
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup
from dlpl_jax.training import state as state_lib


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items()}


def test_trainer_with_every_option_resumes_to_the_uninterrupted_state(tmp_path, tiny_config,
                                                                       tiny_data):
  fresh = setup.new_state(setup.read(tiny_config()), mesh_lib.make_mesh())
  init = tmp_path / "init.npz"
  np.savez(init,
           **{f"params/{k}": v + 0.01 for k, v in _flat(fresh.params).items()
              if not k.startswith("classifier")},
           **{f"batch_stats/{k}": v for k, v in _flat(fresh.batch_stats).items()})
  c = tiny_config(teacher=True, num_views=2, cld_weight=0.3, lr_schedule="warmup_cosine",
                  warmup_steps=2, weight_decay_all=True, nesterov=False,
                  init_checkpoint=str(init))
  configs.validate(c)
  full = loop.train_and_evaluate(c, str(tmp_path / "full"), data=tiny_data)
  assert full["step"] == 4 and np.isfinite(full["final_top1"])
  assert loop.train_and_evaluate(c, str(tmp_path / "part"), data=tiny_data,
                                 stop_at=2)["step"] == 2
  init.rename(tmp_path / "moved.npz")  # a resume never reads the initial weights again
  assert loop.train_and_evaluate(c, str(tmp_path / "part"), data=tiny_data)["step"] == 4

  spec = setup.read(c)
  template = setup.new_state(spec, mesh_lib.make_mesh(), read_init=False)
  full_state, _ = checkpoint.Checkpointer(str(tmp_path / "full"), 2, 3).restore_latest(template)
  part_state, _ = checkpoint.Checkpointer(str(tmp_path / "part"), 2, 3).restore_latest(template)
  assert isinstance(part_state, state_lib.TeacherTrainState)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(full_state)),
                  jax.tree_util.tree_leaves(jax.device_get(part_state))):
    np.testing.assert_array_equal(a, b)
  # The teacher followed the student (params and BN statistics), away from the init.
  for tree in ("params", "batch_stats"):
    teacher = _flat(getattr(part_state, f"teacher_{tree}"))
    student = _flat(getattr(part_state, tree))
    assert set(teacher) == set(student)
    assert any(not np.array_equal(teacher[k], student[k]) for k in teacher), tree
  # Every step's metrics were finite, CLD included.
  with open(tmp_path / "part" / "metrics.jsonl", encoding="utf-8") as f:
    train = [r for r in map(json.loads, f) if r["kind"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["train/loss_cld"]) for r in train)
  # The schedule is the warm-up cosine (the record at step s shows the rate of update s).
  lr = state_lib.learning_rate(spec.optimizer)
  assert spec.optimizer.schedule == "warmup_cosine" and spec.optimizer.decay_all
  assert [r["train/lr"] for r in train] == [float(lr(r["step"])) for r in train]
  assert float(lr(0)) == np.float32(0.03) / 2
