"""dlpl_jax.tools.bench (``dlpl-bench``): the benchmark runs the trainer's step on
synthetic data (CIFAR shapes, and host-made crops for an ImageNet config) and reports
positive numbers; bad arguments are refused before anything is compiled, in one line.
No timing assertions."""

import math
import os

import jax
import pytest

from dlpl_jax.errors import UsageError
from dlpl_jax.tools import bench

TIMES = ("first_step_s", "step_s_median", "step_s_p10", "step_s_p90", "steps_per_s",
         "images_per_s", "step_s_pipelined", "steps_per_s_pipelined", "augment_s_median",
         "eval_first_s", "eval_s_median", "eval_s_p10", "eval_s_p90", "eval_images_per_s")


def test_run_benchmark_reports_positive_numbers(tiny_config, tiny_data, monkeypatch):
  # The conftest's tiny data instead of the benchmark's own synthetic splits (tested
  # below): the same shapes as the trainer's tests, so the compiled step is shared.
  monkeypatch.setattr(bench, "synthetic_data", lambda spec: tiny_data)
  said = []
  r = bench.run_benchmark(tiny_config(), eval_steps=2, steps_per_epoch=2, say=said.append)
  assert r["device_count"] == jax.device_count() and r["jax_version"] == jax.__version__
  assert (r["model"], r["dtype"]) == ("cnn_small", "float32")
  assert (r["batch_labeled"], r["batch_unlabeled"], r["images_per_step"]) == (4, 8, 20)
  assert (r["steps"], r["warmup"]) == bench.DEFAULT_SIZE["cpu"]  # sized to the backend
  assert (r["eval_batch"], r["eval_params"], r["num_views"]) == (64, "ema", 1)
  for k in TIMES:
    assert isinstance(r[k], float) and r[k] > 0, k
  assert r["step_s_p10"] <= r["step_s_median"] <= r["step_s_p90"]
  assert r["eval_s_p10"] <= r["eval_s_median"] <= r["eval_s_p90"]
  assert math.isclose(r["steps_per_s_pipelined"] * r["step_s_pipelined"], 1.0)
  assert math.isclose(r["images_per_s"], 20 / r["step_s_median"])
  assert math.isfinite(r["final_loss"])
  # --steps_per_epoch: the cost of an epoch and of the run's epochs (total_steps 4).
  assert (r["steps_per_epoch"], r["epochs"]) == (2, 2.0)
  assert math.isclose(r["epoch_s"], 2 * r["step_s_pipelined"])
  assert math.isclose(r["run_s"], 2 * r["epoch_s"])
  assert "device" in bench.format_report(r) and "h per epoch" in bench.format_report(r)
  without = {k: v for k, v in r.items()
             if k not in ("steps_per_epoch", "epoch_s", "epochs", "run_s")}
  assert "h per epoch" not in bench.format_report(without)
  # A line per phase while it runs.
  assert said[0].startswith(f"{jax.device_count()} x ") and "20 images a step" in said[0]
  assert "3 timed steps after 1 warm-up" in said[0]
  assert said[1] == "first step (compile + run) ..." and "evaluation (compile + run) ..." in said


def test_bench_runs_the_views_step_and_reports_an_epoch(imagenet_config):
  c = imagenet_config()  # no data read: synthetic views at the crop size
  r = bench.run_benchmark(c, steps=2, warmup=0, eval_steps=2)
  assert (r["model"], r["num_views"], r["images_per_step"]) == ("cnn_small", 2, 4 + 2 * 2 * 8)
  assert (r["steps"], r["warmup"]) == (2, 0)
  assert r["eval_params"] == "student"
  # An ImageNet config's own epoch by default: 24 unlabeled images, 8 a step.
  assert (r["steps_per_epoch"], r["epochs"]) == (3, 2)
  assert math.isclose(r["epoch_s"], 3 * r["step_s_pipelined"])
  assert math.isclose(r["run_s"], 2 * r["epoch_s"])  # the smoke config's 2 epochs
  assert r["augment_s_median"] > 0 and "h per epoch" in bench.format_report(r)


def test_synthetic_inputs_have_the_run_shapes(tiny_config, imagenet_config):
  from dlpl_jax.training import setup  # pylint: disable=import-outside-toplevel
  d = bench.synthetic_data(setup.read(tiny_config()))
  assert d.x_l.shape == (40, 32, 32, 3) and d.x_u.shape == (256, 32, 32, 3)
  assert d.x_test.shape == (64, 32, 32, 3)
  spec = setup.read(imagenet_config(**{"imagenet.split": "clip",
                                       "imagenet.clip_fallback": 0.3,
                                       "imagenet.clip_labeled": __file__}))
  crops = bench.synthetic_crops(spec)
  lab, unl, (ev,) = next(crops.labeled), next(crops.unlabeled), crops.evaluation()
  assert lab["image"].shape == (4, 32, 32, 3) and lab["label"].shape == (4,)
  assert unl["weak"].shape == unl["strong"].shape == (2, 8, 32, 32, 3)
  assert unl["clip_label"].shape == unl["clip_prob"].shape == (8,)
  assert ev["image"].shape == (20, 32, 32, 3)


def test_bench_imports_without_tensorflow(python):
  code = ("import sys, dlpl_jax.bench, dlpl_jax.tools.bench; "
          "assert 'tensorflow' not in sys.modules")
  proc = python(["-c", code], timeout=120)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"warmup": -1}, "--warmup must be >= 0, got -1"),
    ({"eval_steps": 0}, "eval_steps must be >= 1, got 0"),
    ({"steps_per_epoch": 0}, "--steps_per_epoch must be >= 1, got 0"),
    ({"config": {"threshold": 1.5}}, "threshold must be a finite number"),
])
def test_bad_arguments_are_refused_before_compiling(tiny_config, kwargs, match):
  kwargs = dict(kwargs)
  config = tiny_config(**kwargs.pop("config", {}))
  args = {"config": config, "steps": 2, "warmup": 1, **kwargs}
  with pytest.raises(UsageError, match=match):
    bench.check_args(**args)
  with pytest.raises(UsageError, match=match):  # the library call checks them too
    bench.run_benchmark(**args)


def test_unwritable_json_is_refused_before_running(tmp_path, tiny_config):
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
def test_command_line_errors_are_one_line(tmp_path, python, args, match):
  """The command (absl flags exist only under __main__, hence a subprocess): one line
  starting "[dlpl_jax] error:", exit status 2, before anything is compiled."""
  (tmp_path / "afile").write_text("x")
  config = [] if not args else ["--config=experiments/cifar10_4shot.py:smoke"]
  proc = python(["-m", "dlpl_jax.bench"] + config
                + [a.format(afile=tmp_path / "afile") for a in args], timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("[dlpl_jax] error: "), proc.stderr
  assert match in lines[0] and proc.stdout == ""
