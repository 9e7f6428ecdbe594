"""Times the train step and evaluation of a config: the dlpl-bench command (make bench).

  dlpl-bench --config=FILE[:VARIANT] [--steps N] [--warmup N] [--steps_per_epoch N]
      [--json out.json] [--config.KEY=VALUE ...]

It runs the trainer's own set-up (the state, the input stage and the jitted step, data
parallel over every device) on synthetic uint8 data of the config's shapes, so the
timed step does what a real step does: the on-device batch draw and augmentation,
forward/backward, SGD, the EMA and the marginal. No TensorFlow, no dataset. ImageNet
configs get synthetic host-made crops at the crop size, put on the devices every step as
the trainer does (the host's decoding and cropping are not included).

What it reports, one line per phase while it runs: the first step (compile + run), each
step timed alone (medians and p10/p90), the same number of steps back to back with one
sync at the end (as the trainer runs them), the augmentation alone, and an evaluation
pass. Sized to the backend: with no ``--steps`` it times 20 steps after 5 warm-up
steps on a GPU/TPU and 3 after 1 on a CPU. Numbers are per process (all its devices).
With ``--steps_per_epoch`` (default for ImageNet configs: their epoch) it adds the cost
of an epoch and of the run's epochs.

Bad arguments (no ``--config``, a bad config value, ``--steps`` < 1, ``--warmup`` < 0, a
``--json`` path that cannot be written) are refused before anything is compiled, in one
line starting ``[dlpl_jax] error:``, with exit status 2.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from typing import Callable

import jax
import numpy as np

from dlpl_jax import augment
from dlpl_jax import configs
from dlpl_jax import errors
from dlpl_jax.data import in_memory
from dlpl_jax.errors import UsageError
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup

IMAGE_SIZE = 32  # CIFAR-10/100, the datasets the configs name
DEFAULT_SIZE = {"cpu": (3, 1)}  # timed steps, warm-up steps; other backends: (20, 5)


def _timed(fn: Callable, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def _stats(times: list[float]) -> dict:
  p10, p50, p90 = np.percentile(times, [10, 50, 90])
  return {"median": float(p50), "p10": float(p10), "p90": float(p90)}


def synthetic_data(spec: setup.Spec) -> in_memory.SSLData:
  """Learnable synthetic uint8 splits sized for the run (one eval batch of test)."""
  s = spec.step
  return in_memory.synthetic(s.num_classes, labeled_per_class=4,
                             unlabeled=max(2 * s.batch_size * s.mu, 256),
                             test=spec.eval_batch_size, image_size=IMAGE_SIZE)


def synthetic_crops(spec: setup.Spec) -> setup.Crops:
  """Synthetic host-made ImageNet crops of the run's shapes, the same batches again."""
  rng = np.random.default_rng(0)
  o, n = spec.imagenet, jax.process_count()
  img = lambda *shape: rng.integers(0, 256, shape + (o.crop_size, o.crop_size, 3), np.uint8)
  lab = lambda k: rng.integers(0, o.num_classes, (k,)).astype(np.int32)
  b, bu = o.batch_size // n, o.unlabeled_batch // n
  unlabeled = {"weak": img(o.num_views, bu), "strong": img(o.num_views, bu), "label": lab(bu)}
  if spec.step.clip_fallback > 0:
    unlabeled |= {"clip_label": lab(bu), "clip_prob": rng.uniform(size=bu).astype(np.float32)}
  test = {"image": img(o.eval_batch_size // n), "label": lab(o.eval_batch_size // n)}
  return setup.Crops(itertools.repeat({"image": img(b), "label": lab(b)}),
                     itertools.repeat(unlabeled), lambda: [test])


def _augment_time(spec: setup.Spec, mesh, steps: int) -> float:
  """Median seconds of the step's augmentation alone, jitted and sharded like the step:
  weak labeled, K weak + K strong unlabeled views; for host crops, RandAugment + Cutout
  of the K strong crops."""
  s = spec.step
  size = IMAGE_SIZE if spec.imagenet is None else spec.imagenet.crop_size
  x = mesh_lib.from_processes({"x": np.random.default_rng(0).integers(
      0, 256, (s.batch_size * s.mu // jax.process_count(), size, size, 3), np.uint8)}, mesh)["x"]

  @jax.jit
  def views(key):
    keys = jax.random.split(key, 3 * s.num_views)
    if spec.imagenet is not None:
      return [augment.randaugment_cutout(k, x) for k in keys[:s.num_views]]
    return ([augment.weak(keys[0], x[:s.batch_size])]
            + [augment.weak(k, x) for k in keys[1:1 + s.num_views]]
            + [augment.strong(k, x) for k in keys[1 + s.num_views:1 + 2 * s.num_views]])
  keys = iter(jax.random.split(jax.random.PRNGKey(0), steps + 2))
  _timed(lambda: views(next(keys)), 2)
  return _stats(_timed(lambda: views(next(keys)), steps))["median"]


def check_args(config, steps: int | None, warmup: int | None, eval_steps: int | None = None,
               steps_per_epoch: int | None = None, json_path: str | None = None) -> None:
  """Checks the benchmark's arguments before anything is compiled or run.

  Raises:
    UsageError: a bad config value (:func:`dlpl_jax.configs.validate`), ``steps < 1``,
      ``warmup < 0``, ``eval_steps`` or ``steps_per_epoch`` given and ``< 1``, or a
      ``json_path`` that cannot be written.
  """
  configs.validate(config)
  for name, v, low in (("--steps", steps, 1), ("--warmup", warmup, 0),
                       ("eval_steps", eval_steps, 1),
                       ("--steps_per_epoch", steps_per_epoch, 1)):
    if v is not None and v < low:
      raise UsageError(f"{name} must be >= {low}, got {v}")
  if json_path:
    errors.check_output(json_path, "--json")


def _time_steps(inp: setup.Input, state, steps: int, warmup: int,
                say: Callable[[str], None]) -> tuple[dict, object]:
  """The step's timings: the first call (compile + run), ``steps`` steps each synced
  after ``warmup`` untimed ones, the same number back to back with one sync; and the
  final loss. Returns them with the state after the last step."""
  holder = {"state": state}

  def one_step():
    holder["state"], m = inp.step(holder["state"])
    return m

  say("first step (compile + run) ...")
  first_step_s = _timed(one_step, 1)[0]
  say(f"  {first_step_s:.1f} s; {warmup} warm-up, then {steps} steps synced one by one ...")
  _timed(one_step, warmup)
  st = _stats(_timed(one_step, steps))
  say(f"  median {st['median'] * 1e3:.1f} ms; {steps} steps back to back ...")
  t = time.perf_counter()
  for _ in range(steps):
    m = one_step()
  jax.block_until_ready(m)
  pipelined_s = (time.perf_counter() - t) / steps
  final_loss = float(one_step()["train/loss"])
  return {"first_step_s": first_step_s, "step_s_median": st["median"],
          "step_s_p10": st["p10"], "step_s_p90": st["p90"],
          "steps_per_s": 1.0 / st["median"], "step_s_pipelined": pipelined_s,
          "steps_per_s_pipelined": 1.0 / pipelined_s,
          "final_loss": final_loss}, holder["state"]


def run_benchmark(config, steps: int | None = None, warmup: int | None = None,
                  eval_steps: int | None = None, steps_per_epoch: int | None = None,
                  say: Callable[[str], None] = lambda msg: None) -> dict:
  """Times the config's train step and evaluation (see the module docstring).

  Args:
    config: a ConfigDict extending :func:`dlpl_jax.configs.get_base_config`.
    steps, warmup: timed and untimed steps after the first (None: sized to the backend,
      :data:`DEFAULT_SIZE`).
    eval_steps: timed evaluation passes (default ``min(steps, 10)``, at least 2).
    steps_per_epoch: report the cost of an epoch of this many steps.
    say: where the phase lines go (the command prints them).

  Returns:
    A flat dict of the setting (device, versions, model, dtype, batch sizes) and the
    numbers: ``first_step_s`` (compile + run), ``step_s_median`` / ``_p10`` / ``_p90``
    (seconds per step, each step synced), ``steps_per_s``, ``images_per_s`` (both from
    the median), ``step_s_pipelined`` / ``steps_per_s_pipelined`` (the steps dispatched
    back to back, one sync at the end, as the trainer runs them), ``augment_s_median``,
    ``eval_first_s``, ``eval_s_median`` / ``_p10`` / ``_p90`` (an evaluation pass over
    one batch of ``eval_batch_size``), ``eval_images_per_s``, ``final_loss``; with
    ``steps_per_epoch`` (ImageNet configs: their epoch by default) ``epoch_s`` and
    ``run_s`` (epochs x epoch_s) at the back-to-back rate.

  Raises:
    UsageError: as :func:`check_args`, or batch sizes the devices do not divide.
  """
  check_args(config, steps, warmup, eval_steps, steps_per_epoch)
  spec = setup.read(config)
  mesh = mesh_lib.make_mesh()
  setup.check_devices(spec, mesh, allow_cpu=True, log=lambda msg: None)
  default = DEFAULT_SIZE.get(jax.default_backend(), (20, 5))
  steps = default[0] if steps is None else steps
  warmup = default[1] if warmup is None else warmup
  s = spec.step
  images = s.batch_size * (1 + 2 * s.num_views * s.mu)
  say(f"{mesh.size} x {jax.devices()[0].device_kind}: {spec.model[0]} {spec.model[2]}, "
      f"{images} images a step; {steps} timed steps after {warmup} warm-up")
  state = setup.new_state(spec, mesh, read_init=False)
  inp = setup.make_input(spec, mesh, synthetic_data(spec) if spec.imagenet is None
                         else synthetic_crops(spec))
  train, state = _time_steps(inp, state, steps, warmup, say)
  say(f"  {train['step_s_pipelined'] * 1e3:.1f} ms a step; the augmentation alone ...")
  augment_s = _augment_time(spec, mesh, steps)
  say("evaluation (compile + run) ...")
  eval_first_s = _timed(lambda: inp.evaluate(state)["eval/top1"], 1)[0]
  est = _stats(_timed(lambda: inp.evaluate(state)["eval/top1"],
                      max(2, eval_steps or min(steps, 10))))
  if steps_per_epoch is None and spec.imagenet is not None:
    steps_per_epoch = max(1, config.imagenet.unlabeled_images // (s.batch_size * s.mu))
  epoch = {}
  if steps_per_epoch:
    epochs = (config.imagenet.epochs if spec.imagenet is not None
              else spec.loop.total_steps / steps_per_epoch)
    epoch_s = train["step_s_pipelined"] * steps_per_epoch
    epoch = {"steps_per_epoch": steps_per_epoch, "epoch_s": epoch_s, "epochs": epochs,
             "run_s": epoch_s * epochs}
  dev = jax.devices()[0]
  return {
      "device_kind": dev.device_kind, "platform": dev.platform, "device_count": mesh.size,
      "jax_version": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "model": spec.model[0], "dtype": spec.model[2],
      "batch_labeled": s.batch_size, "batch_unlabeled": s.batch_size * s.mu,
      "images_per_step": images, "num_views": s.num_views, "steps": steps, "warmup": warmup,
      **train, "images_per_s": images / train["step_s_median"],
      "augment_s_median": augment_s,
      "eval_batch": spec.eval_batch_size, "eval_first_s": eval_first_s,
      "eval_s_median": est["median"], "eval_s_p10": est["p10"], "eval_s_p90": est["p90"],
      "eval_images_per_s": spec.eval_batch_size / est["median"],
      "eval_params": spec.eval_params, **epoch,
  }


def format_report(r: dict) -> str:
  """The benchmark's figures as a few lines of text."""
  views = "B*(1+2mu)" if r.get("num_views", 1) == 1 else "B*(1+2K mu)"
  lines = [
      f"device      {r['device_count']} x {r['device_kind']} ({r['platform']}), "
      f"jax {r['jax_version']}, XLA_FLAGS={r['xla_flags']!r}",
      f"config      model {r['model']}, dtype {r['dtype']}, labeled B={r['batch_labeled']},"
      f" unlabeled B*mu={r['batch_unlabeled']}, images/step {views}={r['images_per_step']}",
      f"first step  {r['first_step_s']:.1f}s (compile + run); evaluation "
      f"{r['eval_first_s']:.1f}s",
      f"train       {r['steps_per_s']:.3f} steps/s, {r['images_per_s']:.0f} images/s "
      f"(median {r['step_s_median'] * 1e3:.1f} ms/step, p10 {r['step_s_p10'] * 1e3:.1f}, "
      f"p90 {r['step_s_p90'] * 1e3:.1f}; {r['steps']} steps after {r['warmup']} warm-up; "
      "augmentation included)",
      f"            {r['steps_per_s_pipelined']:.3f} steps/s back to back, as the trainer "
      f"runs ({r['step_s_pipelined'] * 1e3:.1f} ms/step, {r['steps']} steps, one sync)",
      f"augment     {r['augment_s_median'] * 1e3:.1f} ms/step alone "
      f"({100 * r['augment_s_median'] / r['step_s_median']:.0f}% of the step's median)",
      f"eval        {r['eval_images_per_s']:.0f} images/s (a pass over {r['eval_batch']} "
      f"images: median {r['eval_s_median'] * 1e3:.1f} ms, {r['eval_params']} params)",
      f"final loss  {r['final_loss']:.4f}",
  ]
  if "epoch_s" in r:
    lines.append(f"epoch       {r['steps_per_epoch']:,} steps: {r['epoch_s'] / 3600:.2f} h per "
                 f"epoch, {r['run_s'] / 3600:.1f} h for {r['epochs']:g} epochs at the "
                 "back-to-back rate (device step only: host decoding and cropping not "
                 "included)")
  return "\n".join(lines)


def main() -> None:
  """The ``dlpl-bench`` command: absl flags, ``--config=FILE[:VARIANT]`` with
  ``--config.KEY=VALUE`` overrides, as ``dlpl_jax.main``."""
  try:
    errors.require("train", "absl", "ml_collections")
  except UsageError as e:
    sys.exit(errors.report(e, e.exit_code))
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from dlpl_jax import host  # pylint: disable=g-import-not-at-top
  config_flag = config_flags.DEFINE_config_file(
      "config", None, "The experiment config: FILE[:VARIANT], e.g. "
      "experiments/cifar10_4shot.py:smoke.", lock_config=True)
  steps = flags.DEFINE_integer("steps", None, "Timed train steps (default: 20 on a "
                               "GPU/TPU, 3 on a CPU).")
  warmup = flags.DEFINE_integer("warmup", None, "Untimed steps after the first (default: 5 "
                                "on a GPU/TPU, 1 on a CPU).")
  steps_per_epoch = flags.DEFINE_integer(
      "steps_per_epoch", None, "Report the cost of an epoch of this many steps (ImageNet "
      "configs: their epoch by default).")
  json_flag = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")
  flags.mark_flags_as_required(["config"])
  sys.modules["__main__"].__doc__ = __doc__  # what --help shows, also as dlpl-bench
  host.configure()  # the XLA:CPU flag, as for training (before the backend starts)
  try:
    configs.check_overrides(sys.argv[1:])
  except UsageError as e:
    sys.exit(errors.report(e, e.exit_code))

  def command():
    config, json_path = config_flag.value, json_flag.value
    check_args(config, steps.value, warmup.value, None, steps_per_epoch.value, json_path)
    r = run_benchmark(config, steps.value, warmup.value,
                      steps_per_epoch=steps_per_epoch.value,
                      say=lambda msg: print(msg, flush=True))
    print(format_report(r), flush=True)
    if json_path:
      os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
      with open(json_path, "w", encoding="utf-8") as f:
        json.dump(r, f, indent=2)
      print(f"wrote {json_path}")

  def run(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    return errors.run_command(command, paths=(json_flag.value,))

  app.run(run, flags_parser=errors.parse_absl_flags)


if __name__ == "__main__":
  main()
