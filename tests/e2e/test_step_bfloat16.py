"""bfloat16 activations train like float32 for a few steps, the params staying float32
(two compiles of the step, hence the end-to-end tier)."""

import jax
import jax.numpy as jnp
import numpy as np

from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup


def test_bfloat16_losses_track_float32(tiny_config, tiny_data):
  """Same init, same data and keys: 5 steps in float32 and in bfloat16 activations.

  Tolerance: per step, |loss_bf16 - loss_f32| <= 0.05 + 5% of loss_f32. The threshold
  stays FixMatch's 0.95, so the few confident pseudo-labels agree between the runs; at
  0.5 a mask flip moved one step's loss by 5%. The params, the EMA params and the
  BatchNorm statistics stay float32 in the bfloat16 run.
  """
  mesh = mesh_lib.make_mesh()
  losses, states = {}, {}
  for dtype in ("float32", "bfloat16"):
    spec = setup.read(tiny_config(dtype=dtype, threshold=0.95, marginal_momentum=0.999))
    state = setup.new_state(spec, mesh, read_init=False)
    states[dtype + "_init"] = state
    inp = setup.make_input(spec, mesh, tiny_data)
    out = []
    for _ in range(5):
      state, m = inp.step(state)
      out.append(float(m["train/loss"]))
    losses[dtype], states[dtype] = np.asarray(out), state
  # Same init: the param dtype does not depend on the activation dtype.
  jax.tree_util.tree_map(np.testing.assert_array_equal, states["float32_init"].params,
                         states["bfloat16_init"].params)
  assert np.all(np.isfinite(losses["float32"])) and np.all(np.isfinite(losses["bfloat16"]))
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05, atol=0.05)
  s = states["bfloat16"]
  for tree in (s.params, s.ema_params, s.batch_stats):
    assert {x.dtype for x in jax.tree_util.tree_leaves(tree)} == {jnp.dtype(jnp.float32)}
  # ... and bf16 really changed the computation (not silently float32).
  assert not np.array_equal(losses["bfloat16"], losses["float32"])
