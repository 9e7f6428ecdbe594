"""Orbax checkpoints of the whole TrainState in ``WORKDIR/checkpoints``."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every ``every`` steps (and on demand), keeps ``keep``, restores the latest.

  The restore target is the abstract (``jax.eval_shape``) form of a fresh state, so the
  restored arrays get the fresh state's shardings, dtypes and shapes.
  """

  def __init__(self, workdir: str, every: int, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves ``state`` as ``step`` (no-op when that step is already saved)."""
    if step == self.manager.latest_step():
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore_latest(self, state):
    """Returns ``(state, step)`` from the latest checkpoint, or ``(state, None)``."""
    step = self.manager.latest_step()
    if step is None:
      return state, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return restored, step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
