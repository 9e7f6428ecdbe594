"""The benchmark runs and reports positive numbers; bfloat16 mixed precision trains like
float32 for a few steps (params stay float32). No timing assertions."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax.tools import bench
from dlpl_jax.training import step as train
from dlpl_jax.errors import UsageError
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
  """benchmarks/trainer_throughput.py (the GPU trainer-rate check) runs end to end."""
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.trainer_throughput",
       "--config", "experiments/cifar10_4shot.py:smoke", "--steps", "64",
       "--log_every", "32", "--unlabeled", "200", "--test", "256", "--dtype", "float32",
       "--workdir", str(tmp_path / "w")],
      check=True, capture_output=True, text=True, timeout=600)
  assert "trainer steps/s per window of 32 steps:" in out.stdout
  rates = out.stdout.split("steps:")[1].split("\n")[0].split()
  assert len(rates) == 2 and all(float(r) > 0 for r in rates)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"warmup": -1}, "--warmup must be >= 0, got -1"),
    ({"steps_per_epoch": 0}, "--steps_per_epoch must be >= 1, got 0"),
    ({"config": tiny_config(threshold=1.5)}, "threshold must be a finite number"),
])
def test_bad_arguments_are_refused_before_compiling(kwargs, match):
  args = {"config": tiny_config(), "steps": 2, "warmup": 1, **kwargs}
  with pytest.raises(UsageError, match=match):
    bench.check_args(**args)
  with pytest.raises(UsageError, match=match):  # the library call checks them too
    bench.run_benchmark(**args)


def test_unwritable_json_is_refused_before_running(tmp_path):
  (tmp_path / "afile").write_text("x")
  with pytest.raises(UsageError, match="--json .*afile is a file, not a folder"):
    bench.check_args(tiny_config(), 2, 1, json_path=str(tmp_path / "afile" / "b.json"))
  with pytest.raises(UsageError, match="is a folder"):
    bench.check_args(tiny_config(), 2, 1, json_path=str(tmp_path))
  bench.check_args(tiny_config(), 2, 1, json_path=str(tmp_path / "new" / "b.json"))
  assert sorted(os.listdir(tmp_path)) == ["afile"]  # the check creates nothing


@pytest.mark.parametrize("args, match", [
    ([], "Flag --config must have a value other than None"),
    (["--config.threshold=1.5"], "bad config: threshold must be a finite number"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--json", "{afile}/b.json"], "afile is a file, not a folder"),
])
def test_command_line_errors_are_one_line(tmp_path, args, match):
  """The command (absl flags exist only under __main__, hence a subprocess): one line
  starting "[dlpl_jax] error:", exit status 2, before anything is compiled."""
  (tmp_path / "afile").write_text("x")
  config = [] if not args else ["--config=experiments/cifar10_4shot.py:smoke"]
  proc = subprocess.run(
      [sys.executable, "-m", "dlpl_jax.bench"] + config
      + [a.format(afile=tmp_path / "afile") for a in args],
      capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("[dlpl_jax] error: "), proc.stderr
  assert match in lines[0] and proc.stdout == ""
