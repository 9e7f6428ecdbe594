"""The benchmark runs and reports positive numbers; bfloat16 mixed precision trains like
float32 for a few steps (params stay float32). No timing assertions."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dlpl_jax import bench
from dlpl_jax import train
from tests import helpers


def tiny_config(**overrides):
  return helpers.small_config(**{"eval_batch_size": 16, **overrides})


def test_run_benchmark_reports_positive_numbers():
  r = bench.run_benchmark(tiny_config(), steps=2, warmup=1, eval_steps=2)
  assert r["device_count"] == jax.device_count() and r["jax_version"] == jax.__version__
  assert (r["model"], r["dtype"]) == ("cnn_small", "float32")
  assert (r["batch_labeled"], r["batch_unlabeled"], r["images_per_step"]) == (4, 8, 20)
  for k in ("compile_s", "first_step_s", "step_s_median", "step_s_p10", "step_s_p90",
            "steps_per_s", "images_per_s", "step_s_pipelined", "steps_per_s_pipelined",
            "augment_s_median", "eval_compile_s", "eval_batch_s_median", "eval_images_per_s"):
    assert isinstance(r[k], float) and r[k] > 0, k
  assert r["step_s_p10"] <= r["step_s_median"] <= r["step_s_p90"]
  assert math.isclose(r["steps_per_s_pipelined"] * r["step_s_pipelined"], 1.0)
  assert math.isfinite(r["final_loss"])
  assert "device" in bench.format_report(r)


def test_bench_imports_without_tensorflow():
  code = "import sys, dlpl_jax.bench; assert 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_losses_track_float32():
  """Same init, same data and keys: 5 steps in float32 and in bfloat16 activations.

  Tolerance: per step, |loss_bf16 - loss_f32| <= 0.05 + 5% of loss_f32 (seen here: at
  most 0.021). The threshold stays FixMatch's 0.95, so the few confident pseudo-labels
  agree between the runs; at 0.5 a mask flip moved one step's loss by 5%. The params,
  the EMA params and the BatchNorm statistics stay float32 in the bfloat16 run.
  """
  data = bench.synthetic_data(tiny_config())  # the benchmark's shapes: jit cache hit
  host = {"x_l": data.x_l, "y_l": data.y_l, "x_u": data.x_u, "y_u": data.y_u}
  mesh = train.make_mesh()
  device_data = train.replicate(host, mesh)
  losses, states = {}, {}
  for dtype in ("float32", "bfloat16"):
    c = tiny_config(dtype=dtype)
    model = train.build_model(c)
    cfg = train.StepConfig.from_config(c)
    state = train.replicate(jax.device_get(
        train.create_train_state(c, model, data.x_l.shape[1:])), mesh)
    states[dtype + "_init"] = state
    out = []
    for _ in range(5):
      state, m = train.jit_train_step(state, device_data, model=model, cfg=cfg, mesh=mesh)
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


def test_trainer_throughput_script_reports_window_rates(tmp_path):
  """experiments/trainer_throughput.py (the GPU trainer-rate check) runs end to end."""
  out = subprocess.run(
      [sys.executable, "-m", "experiments.trainer_throughput",
       "--config", "experiments/cifar10_4shot.py:smoke", "--steps", "64",
       "--log_every", "32", "--unlabeled", "200", "--test", "256", "--dtype", "float32",
       "--workdir", str(tmp_path / "w")],
      check=True, capture_output=True, text=True, timeout=600)
  assert "trainer steps/s per window of 32 steps:" in out.stdout
  rates = out.stdout.split("steps:")[1].split("\n")[0].split()
  assert len(rates) == 2 and all(float(r) > 0 for r in rates)
