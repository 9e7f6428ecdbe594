"""Throughput benchmark of the train step and the eval step, without TensorFlow.

  python -m dlpl_jax.bench --config=experiments/cifar10_4shot.py [--steps 20] [--warmup 5]
      [--json out.json] [--config.dtype=bfloat16 ...]

Runs the trainer's own data-parallel step (:func:`dlpl_jax.train.jit_train_step` over
:func:`~dlpl_jax.train.make_mesh`, state and data replicated, batch sharded along
``"data"``) on synthetic uint8 images of CIFAR's 32x32 size, so the timed step includes
the on-device batch draw, weak + strong augmentation, forward/backward, SGD and EMA.
Each step is timed alone (``block_until_ready``; medians and p10/p90 are reported), then
the same number of steps back to back with one sync at the end, as the trainer runs
them (on an H100 the two differ by ~3 ms per step, experiments/results/gpu.md); the
augmentation is also timed alone.
Eval is :func:`~dlpl_jax.train.jit_eval_step` with the params the trainer evaluates
(the EMA params, or the student's where ``eval_params = 'student'``), one batch of
``eval_batch_size`` images at a time. Numbers are per process (all its devices).

ImageNet configs (``input = 'imagenet'``): the step is
:func:`~dlpl_jax.train.jit_train_step_views` on synthetic host-made views at the config's
crop size (``B`` labeled views, ``K`` weak and ``K`` strong crops of ``B * mu`` images;
RandAugment + Cutout of the strong crops on the device, timed alone as the
augmentation), so the host's decoding and cropping are not included. With
``--steps_per_epoch N`` (default for these configs: ``imagenet.unlabeled_images /
(B * mu)``) the report adds the cost of one epoch and of the run's epochs. The full
ResNet-50 step (64 + 2 x 2 x 320 images at 224) is for an accelerator; on a CPU use e.g.
``--config.batch_size=2 --config.mu=1``.

Bad arguments (no ``--config``, a bad config value, ``--steps`` < 1, ``--warmup`` < 0, a
``--json`` path that cannot be written) are refused before anything is compiled, in one
line starting ``[dlpl_jax] error:``, with exit status 2.

On CPU (jax 0.10.2) the XLA flag
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` (Eigen instead of
YNNPACK convolutions) made the full step about 2x faster, the kernel gradients most:
see experiments/results/bench_cpu.md.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from dlpl_jax import augment
from dlpl_jax import configs
from dlpl_jax import errors
from dlpl_jax import input_pipeline
from dlpl_jax import train
from dlpl_jax.errors import UsageError

IMAGE_SIZE = 32  # CIFAR-10/100, the datasets the configs name


def _timed(fn, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def _stats(times: list[float]) -> dict:
  p10, p50, p90 = np.percentile(times, [10, 50, 90])
  return {"median": float(p50), "p10": float(p10), "p90": float(p90)}


def _augment_time(mesh, data, b: int, mu: int, steps: int) -> float:
  """Median seconds of the step's augmentation alone (weak labeled, weak + strong
  unlabeled: ``b * (1 + 2 mu)`` images), jitted and sharded like the step."""
  sharding = NamedSharding(mesh, P("data"))
  x_l = jax.device_put(np.resize(data.x_l, (b,) + data.x_l.shape[1:]), sharding)
  x_u = jax.device_put(np.resize(data.x_u, (b * mu,) + data.x_u.shape[1:]), sharding)

  @jax.jit
  def views(key):
    k_l, k_w, k_s = jax.random.split(key, 3)
    return augment.weak(k_l, x_l), augment.weak(k_w, x_u), augment.strong(k_s, x_u)

  keys = iter(jax.random.split(jax.random.PRNGKey(0), steps + 3))
  _timed(lambda: views(next(keys)), 2)
  return _stats(_timed(lambda: views(next(keys)), steps))["median"]


def synthetic_data(config) -> input_pipeline.SSLData:
  """Learnable synthetic uint8 splits sized for the config (one eval batch of test)."""
  return input_pipeline.synthetic(
      config.num_classes, labeled_per_class=4,
      unlabeled=max(2 * config.batch_size * config.mu, 256),
      test=config.eval_batch_size, image_size=IMAGE_SIZE)


def _views_setup(config, mesh):
  """Synthetic host-made views for an ImageNet config, placed as the trainer places them."""
  rng = np.random.default_rng(0)
  s, k = config.imagenet.crop_size, config.num_views
  b, bu = config.batch_size, config.batch_size * config.mu
  img = lambda *shape: rng.integers(0, 256, shape + (s, s, 3), np.uint8)  # noqa: E731
  lab = lambda n: rng.integers(0, config.num_classes, (n,)).astype(np.int32)  # noqa: E731
  sharding = NamedSharding(mesh, P("data"))
  views = NamedSharding(mesh, P(None, "data"))
  labeled = {"image": jax.device_put(img(b), sharding), "label": jax.device_put(lab(b), sharding)}
  unlabeled = {"weak": jax.device_put(img(k, bu), views),
               "strong": jax.device_put(img(k, bu), views),
               "label": jax.device_put(lab(bu), sharding)}
  if train.StepConfig.from_config(config).clip_fallback > 0:
    unlabeled["clip_label"] = jax.device_put(lab(bu), sharding)
    unlabeled["clip_prob"] = jax.device_put(rng.uniform(size=bu).astype(np.float32), sharding)
  test = (img(config.eval_batch_size), lab(config.eval_batch_size))
  return labeled, unlabeled, test


def _views_augment_time(unlabeled, k: int, steps: int) -> float:
  """Median seconds of RandAugment + Cutout on the K strong crops alone."""
  @jax.jit
  def views(key):
    keys = jax.random.split(key, k)
    return [train.randaugment_cutout(keys[i], unlabeled["strong"][i]) for i in range(k)]
  keys = iter(jax.random.split(jax.random.PRNGKey(0), steps + 3))
  _timed(lambda: views(next(keys)), 2)
  return _stats(_timed(lambda: views(next(keys)), steps))["median"]


def check_args(config, steps: int, warmup: int, eval_steps: int | None = None,
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


def run_benchmark(config, steps: int = 20, warmup: int = 5, eval_steps: int | None = None,
                  steps_per_epoch: int | None = None) -> dict:
  """Compiles and times the config's train step and eval step.

  Args:
    config: a ConfigDict extending :func:`dlpl_jax.configs.get_base_config`.
    steps: timed train steps (after ``warmup`` untimed ones).
    warmup: untimed train steps after the first call (which is timed alone).
    eval_steps: timed eval batches (default ``min(steps, 10)``, at least 2).

  Raises:
    UsageError: a bad config (:func:`dlpl_jax.configs.validate`), ``steps < 1``,
      ``warmup < 0``, ``eval_steps`` or ``steps_per_epoch`` given and ``< 1``, or batch
      sizes that the devices do not divide (before anything is compiled).

  Returns:
    A flat dict of the setting (device, versions, model, dtype, batch sizes) and the
    numbers: ``compile_s`` (lower + compile), ``first_step_s``, ``step_s_median`` /
    ``_p10`` / ``_p90`` (seconds per step), ``steps_per_s``, ``images_per_s`` (both
    from the median), ``step_s_pipelined`` / ``steps_per_s_pipelined`` (``steps``
    steps dispatched back to back, one sync at the end: no host round trip per step,
    which on a GPU costs ~3 ms of a ~10 ms step; the trainer also overlaps its steps but
    measured 7-14% under this on an H100/H200), ``augment_s_median``
    (the augmentation alone), ``eval_compile_s``, ``eval_batch_s_median`` / ``_p10`` / ``_p90``,
    ``eval_images_per_s``, ``final_loss``; with ``steps_per_epoch`` (ImageNet
    configs: their epoch by default) ``epoch_s`` and ``run_s`` (epochs x epoch_s), from
    the back-to-back rate.
  """
  check_args(config, steps, warmup, eval_steps, steps_per_epoch)
  mesh = train.make_mesh()
  b, mu = config.batch_size, config.mu
  for name, v in (("batch_size", b), ("batch_size * mu", b * mu),
                  ("eval_batch_size", config.eval_batch_size)):
    if v % mesh.size:
      raise UsageError(f"{name} = {v} must be divisible by the {mesh.size} devices")
  model = train.build_model(config)
  cfg = train.StepConfig.from_config(config)
  views = configs.input_kind(config) == "imagenet"
  if views:
    labeled, unlabeled, (x_test, y_test) = _views_setup(config, mesh)
    shape = tuple(labeled["image"].shape[1:])
    args = (labeled, unlabeled)
    jitted = train.jit_train_step_views
    images = b + 2 * cfg.num_views * b * mu  # trained + teacher/weak images
    if steps_per_epoch is None:
      steps_per_epoch = max(1, config.imagenet.unlabeled_images // (b * mu))
  else:
    data = synthetic_data(config)
    shape = data.x_l.shape[1:]
    args = (train.replicate({"x_l": data.x_l, "y_l": data.y_l, "x_u": data.x_u,
                             "y_u": data.y_u}, mesh),)
    jitted = train.jit_train_step
    images = b * (1 + 2 * mu)
    x_test, y_test = data.x_test, data.y_test
  state = train.create_train_state(config, model, shape, read_init=False)
  state = train.replicate(jax.device_get(state), mesh)

  t = time.perf_counter()
  step = jitted.lower(state, *args, model=model, cfg=cfg, mesh=mesh).compile()
  compile_s = time.perf_counter() - t
  holder = {"state": state}

  def one_step():
    holder["state"], m = step(holder["state"], *args)
    return holder["state"], m

  first_step_s = _timed(one_step, 1)[0]
  _timed(one_step, warmup)
  times = _timed(one_step, steps)
  # Back to back, as the trainer runs (it dispatches step n+1 while step n computes):
  # no host round trip between steps, which matters on a GPU (ms-long steps).
  t = time.perf_counter()
  for _ in range(steps):
    out = one_step()
  jax.block_until_ready(out)
  pipelined_s = (time.perf_counter() - t) / steps
  final_loss = float(one_step()[1]["train/loss"])
  st = _stats(times)
  augment_s = (_views_augment_time(unlabeled, cfg.num_views, steps) if views
               else _augment_time(mesh, data, b, mu, steps))

  x_test, y_test = train.replicate((x_test, y_test), mesh)
  eb = config.eval_batch_size
  kw = dict(model=model, num_classes=config.num_classes, batch=eb, mesh=mesh)
  ema, bs = train.eval_variables(holder["state"], configs.eval_params(config))
  t = time.perf_counter()
  ev = train.jit_eval_step.lower(ema, bs, x_test, y_test, 0, **kw).compile()
  eval_compile_s = time.perf_counter() - t
  run_eval = lambda: ev(ema, bs, x_test, y_test, 0)  # noqa: E731
  _timed(run_eval, 1)
  est = _stats(_timed(run_eval, max(2, eval_steps or min(steps, 10))))

  dev = jax.devices()[0]
  epoch = {}
  if steps_per_epoch:
    epochs = config.imagenet.epochs if views else config.total_steps / steps_per_epoch
    epoch = {"steps_per_epoch": steps_per_epoch, "epoch_s": pipelined_s * steps_per_epoch,
             "epochs": epochs, "run_s": pipelined_s * steps_per_epoch * epochs}
  return {
      "device_kind": dev.device_kind, "platform": dev.platform, "device_count": mesh.size,
      "jax_version": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "model": config.model, "dtype": config.dtype,
      "batch_labeled": b, "batch_unlabeled": b * mu, "images_per_step": images,
      "steps": steps, "warmup": warmup,
      "compile_s": compile_s, "first_step_s": first_step_s,
      "step_s_median": st["median"], "step_s_p10": st["p10"], "step_s_p90": st["p90"],
      "steps_per_s": 1.0 / st["median"], "images_per_s": images / st["median"],
      "step_s_pipelined": pipelined_s, "steps_per_s_pipelined": 1.0 / pipelined_s,
      "augment_s_median": augment_s,
      "eval_batch": eb, "eval_compile_s": eval_compile_s,
      "eval_batch_s_median": est["median"], "eval_batch_s_p10": est["p10"],
      "eval_batch_s_p90": est["p90"], "eval_images_per_s": eb / est["median"],
      "final_loss": final_loss, "num_views": cfg.num_views,
      "eval_params": configs.eval_params(config), **epoch,
  }


def format_report(r: dict) -> str:
  return "\n".join([
      f"device      {r['device_count']} x {r['device_kind']} ({r['platform']}), "
      f"jax {r['jax_version']}, XLA_FLAGS={r['xla_flags']!r}",
      f"config      model {r['model']}, dtype {r['dtype']}, labeled B={r['batch_labeled']},"
      f" unlabeled B*mu={r['batch_unlabeled']}, images/step "
      f"{'B*(1+2mu)' if r.get('num_views', 1) == 1 else 'B*(1+2K mu)'}="
      f"{r['images_per_step']}",
      f"compile     train step {r['compile_s']:.1f}s (lower+compile), first call "
      f"{r['first_step_s']:.2f}s; eval step {r['eval_compile_s']:.1f}s",
      f"train       {r['steps_per_s']:.3f} steps/s, {r['images_per_s']:.0f} images/s "
      f"(median {r['step_s_median'] * 1e3:.1f} ms/step, p10 {r['step_s_p10'] * 1e3:.1f}, "
      f"p90 {r['step_s_p90'] * 1e3:.1f}; {r['steps']} steps after {r['warmup']} warm-up; "
      f"augmentation included)",
      f"            {r['steps_per_s_pipelined']:.3f} steps/s back to back, as the trainer "
      f"runs ({r['step_s_pipelined'] * 1e3:.1f} ms/step, {r['steps']} steps, one sync)",
      f"augment     {r['augment_s_median'] * 1e3:.1f} ms/step alone ("
      + ("weak labeled, weak + strong unlabeled" if r.get("num_views", 1) == 1 and
         "steps_per_epoch" not in r else "RandAugment + Cutout of the strong crops")
      + f"; {100 * r['augment_s_median'] / r['step_s_median']:.0f}% of the "
      f"step's median)",
      f"eval        {r['eval_images_per_s']:.0f} images/s (batch {r['eval_batch']}, median "
      f"{r['eval_batch_s_median'] * 1e3:.1f} ms/batch, {r.get('eval_params', 'ema')} "
      "params)",
      f"final loss  {r['final_loss']:.4f}",
  ] + ([f"epoch       {r['steps_per_epoch']:,} steps: {r['epoch_s'] / 3600:.2f} h per epoch, "
        f"{r['run_s'] / 3600:.1f} h for {r['epochs']:g} epochs at the back-to-back rate "
        "(device step only: host decoding and cropping not included)"]
       if "epoch_s" in r else []))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, json_path = _CONFIG.value, _JSON.value

  def command():
    check_args(config, _STEPS.value, _WARMUP.value, None, _STEPS_PER_EPOCH.value,
               json_path)
    r = run_benchmark(config, _STEPS.value, _WARMUP.value,
                      steps_per_epoch=_STEPS_PER_EPOCH.value)
    print(format_report(r), flush=True)
    if json_path:
      os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
      with open(json_path, "w", encoding="utf-8") as f:
        json.dump(r, f, indent=2)
      print(f"wrote {json_path}")

  return errors.run_command(command, paths=(json_path,))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                            lock_config=True)
  _STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps.")
  _WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed train steps after the first.")
  _STEPS_PER_EPOCH = flags.DEFINE_integer(
      "steps_per_epoch", None, "Report the cost of an epoch of this many steps (ImageNet "
      "configs: their epoch by default).")
  _JSON = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")
  flags.mark_flags_as_required(["config"])
  from dlpl_jax import host  # pylint: disable=g-import-not-at-top
  host.configure()  # the XLA:CPU flag, as for training (before the backend starts)
  try:
    configs.check_overrides(sys.argv[1:])
  except UsageError as e:
    sys.exit(errors.report(e, e.exit_code))
  app.run(main, flags_parser=errors.parse_absl_flags)
