"""The real trainer's speed, without TensorFlow or the dataset, and where its host time
per step goes.

Runs :func:`dlpl_jax.trainer.train_and_evaluate` (logging, evaluations, pseudo-label
statistics, orbax checkpoints, the progress bar) with a full-scale config on synthetic
CIFAR-sized uint8 data, and prints the trainer's own steps/s (``train/steps_per_sec`` in
metrics.jsonl, one value per ``log_every`` window; the windows after an evaluation or
a checkpoint are slower, and are shown but left out of the median).
:mod:`dlpl_jax.bench` times the step alone; this shows what a run gets.

  python -m experiments.trainer_throughput [--config experiments/cifar10_4shot.py[:VARIANT]]
      [--steps 2048] [--dtype bfloat16] [--workdir DIR] [--json FILE]

``--host_breakdown`` times, with ``time.perf_counter`` around the trainer's calls (the
trainer itself is unchanged: the functions it calls are wrapped), how the host spends
each step: dispatching the jitted step, waiting for the previous step, fetching and
writing metrics, evaluations, checkpoints, and the loop's own Python. It also times the
same jitted step dispatched back to back (as :mod:`dlpl_jax.bench`), so that
``loop per step - back to back per step`` is the host cost the loop adds, and the host
cost of one dispatch through ``jax.jit`` (as the trainer) and through the AOT-compiled
executable (as the bench). Use a tiny
model to make the host visible, e.g. on a CPU:

  python -m experiments.trainer_throughput --config experiments/cifar10_4shot.py:smoke \\
      --steps 2048 --batch_size 4 --mu 1 --unlabeled 2000 --test 500 --host_breakdown

Needs ml_collections (config files) but not TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import time

import jax
import numpy as np

from dlpl_jax import configs
from dlpl_jax import input_pipeline
from dlpl_jax import metrics
from dlpl_jax import train
from dlpl_jax import trainer


class HostTimer:
  """Wraps the functions the trainer's loop calls with perf_counter timers (installed
  with :meth:`install`, removed with :meth:`restore`). Only the outermost timed call
  counts (an evaluation's own device_get is evaluation time), and only from the end of
  the first, compiling, step dispatch on."""

  def __init__(self):
    self.seconds = collections.Counter()
    self.calls = collections.Counter()
    self.first_dispatch_end = None
    self._depth = 0
    self._saved = []

  def _wrap(self, owner, attr: str, label: str):
    fn = getattr(owner, attr)
    timer = self

    def wrapped(*a, **k):
      timer._depth += 1  # pylint: disable=protected-access
      t = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        timer._depth -= 1  # pylint: disable=protected-access
        now = time.perf_counter()
        if timer.first_dispatch_end is None:
          if label == "step dispatch":
            timer.first_dispatch_end = now
        elif timer._depth == 0:  # pylint: disable=protected-access
          timer.seconds[label] += now - t
          timer.calls[label] += 1
    self._saved.append((owner, attr, fn))
    setattr(owner, attr, wrapped)

  def install(self):
    self._wrap(train, "jit_train_step", "step dispatch")
    self._wrap(jax, "block_until_ready", "wait for device (block_until_ready)")
    self._wrap(jax, "device_get", "device_get (metrics, marginal, confusions)")
    self._wrap(metrics.MetricWriter, "write", "metrics writer (jsonl, TensorBoard)")
    self._wrap(metrics, "pseudo_label_stats", "pseudo-label statistics")
    self._wrap(train, "evaluate", "evaluation")
    self._wrap(trainer.checkpoint_lib.Checkpointer, "save", "checkpoint save")
    self._wrap(np, "savez", "class-feature files (np.savez)")
    return self

  def restore(self):
    for owner, attr, fn in reversed(self._saved):
      setattr(owner, attr, fn)
    self._saved = []


def _step_inputs(config, data):
  """A fresh replicated state, the data on the devices, and the static keywords with
  which the trainer calls ``train.jit_train_step(state, data, **keywords)``."""
  mesh = train.make_mesh()
  model = train.build_model(config)
  cfg = train.StepConfig.from_config(config)
  state = train.replicate(jax.device_get(
      train.create_train_state(config, model, data.x_l.shape[1:])), mesh)
  dev = train.replicate({"x_l": data.x_l, "y_l": data.y_l, "x_u": data.x_u,
                         "y_u": data.y_u}, mesh)
  return state, dev, {"model": model, "cfg": cfg, "mesh": mesh}


def back_to_back(config, data, steps: int) -> float:
  """Seconds per step of the jitted step dispatched ``steps`` times, synced once."""
  state, dev, kw = _step_inputs(config, data)
  for _ in range(3):  # compile and warm up
    state, m = train.jit_train_step(state, dev, **kw)
  jax.block_until_ready((state, m))
  t = time.perf_counter()
  for _ in range(steps):
    state, m = train.jit_train_step(state, dev, **kw)
  jax.block_until_ready((state, m))
  return (time.perf_counter() - t) / steps


def dispatch_cost(config, data, n: int = 200) -> dict:
  """Host µs to dispatch one train step (call returned; the step is then synced, untimed):
  through ``jax.jit`` with the static ``model``/``cfg``/``mesh`` keywords, as the trainer
  calls it, against the AOT-compiled executable, as :mod:`dlpl_jax.bench` calls it."""
  state, dev, kw = _step_inputs(config, data)
  compiled = train.jit_train_step.lower(state, dev, **kw).compile()
  calls = {
      "jax.jit with static keywords (trainer)":
          lambda st: train.jit_train_step(st, dev, **kw),
      "AOT-compiled executable (bench)": lambda st: compiled(st, dev),
  }
  out = {}
  for name, call in calls.items():
    times = []
    for i in range(n + 20):
      t = time.perf_counter()
      state, m = call(state)
      if i >= 20:
        times.append(time.perf_counter() - t)
      jax.block_until_ready((state, m))
    out[name] = 1e6 * float(np.median(times))
  leaves = len(jax.tree_util.tree_leaves(state))
  print(f"\nstep dispatch, host µs per call (median of {n}, state of {leaves} arrays):")
  for k, v in out.items():
    print(f"  {v:9.1f} µs  {k}")
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="experiments/cifar10_4shot.py",
                 help="config file, optionally :variant (e.g. :smoke)")
  p.add_argument("--steps", type=int, default=2048)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--batch_size", type=int, default=None, help="override (default: config)")
  p.add_argument("--mu", type=int, default=None, help="override (default: config)")
  p.add_argument("--unlabeled", type=int, default=50_000,
                 help="synthetic unlabeled images held on the device (CIFAR: 50k)")
  p.add_argument("--test", type=int, default=10_000, help="synthetic test images")
  p.add_argument("--workdir", default="/tmp/trainer_throughput")
  p.add_argument("--schedule_steps", type=int, default=None,
                 help="config.total_steps (the lr schedule); the run stops after --steps "
                      "(default: --steps). With a training run's value, the step compiles "
                      "to the same program, so a persistent compilation cache serves it")
  p.add_argument("--log_every", type=int, default=128)
  p.add_argument("--work_every", type=int, default=None,
                 help="evaluation and checkpoint every N steps (default: steps / 2)")
  p.add_argument("--json", default=None, help="also write the figures to this file")
  p.add_argument("--host_breakdown", action="store_true",
                 help="time the host's work per step (see the module docstring)")
  args = p.parse_args()
  if args.steps < 2 * args.log_every:
    p.error(f"--steps must be >= 2 * --log_every (two windows), got {args.steps}")
  if args.schedule_steps is not None and args.schedule_steps < args.steps:
    p.error("--schedule_steps must be >= --steps")
  config = configs.load_config_file(args.config)
  config.unlock()
  config.total_steps = args.schedule_steps or args.steps
  config.dtype = args.dtype
  config.log_every = args.log_every
  work_every = args.work_every or args.steps // 2
  config.eval_every = work_every
  config.checkpoint_every = work_every
  config.eval_examples = 0
  config.eval_batch_size = min(config.eval_batch_size, args.test)
  config.progress = False
  if args.batch_size:
    config.batch_size = args.batch_size
  if args.mu:
    config.mu = args.mu
  config.lock()
  data = input_pipeline.synthetic(config.num_classes, labeled_per_class=4,
                                  unlabeled=args.unlabeled, test=args.test)
  shutil.rmtree(args.workdir, ignore_errors=True)
  timer = HostTimer().install() if args.host_breakdown else None
  t = time.perf_counter()
  try:
    summary = trainer.train_and_evaluate(
        config, args.workdir, data=data,
        stop_at=args.steps if config.total_steps > args.steps else None)
  finally:
    if timer is not None:
      timer.restore()
  t_end = time.perf_counter()
  wall = t_end - t
  rows = metrics.read_jsonl(os.path.join(args.workdir, "metrics.jsonl"))
  train_rows = [r for r in rows if r.get("kind") == "train" and "train/steps_per_sec" in r]
  rates = [r["train/steps_per_sec"] for r in train_rows]
  steps_with_work = set(range(work_every, args.steps + 1, work_every))
  # The rate is taken at the log before an eval/checkpoint runs, so their time lands in
  # the window after them.
  plain = [r["train/steps_per_sec"] for r in train_rows[1:]
           if r["step"] - config.log_every not in steps_with_work]
  dev = jax.devices()[0]
  print(f"{jax.device_count()} x {dev.device_kind}, jax {jax.__version__}, {config.model}, "
        f"{config.dtype}, {args.steps} steps of {config.batch_size * (1 + 2 * config.mu)} "
        f"images, eval of {args.test} + checkpoint every {work_every} steps")
  print("trainer steps/s per window of", config.log_every, "steps:",
        " ".join(f"{x:.1f}" for x in rates))
  if plain:
    print(f"trainer steps/s, median of windows without eval/checkpoint (first skipped): "
          f"{np.median(plain):.2f}")
  top1 = summary.get("final_top1")
  print(f"wall {wall:.1f}s for the whole call (compile, {args.steps} steps, evals, "
        f"checkpoints)" + ("" if top1 is None else
                           f"; final EMA top-1 on the synthetic test set {top1:.2f}%"))
  out = {"device": f"{jax.device_count()} x {dev.device_kind}", "jax": jax.__version__,
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "model": config.model,
         "dtype": config.dtype, "steps": args.steps, "log_every": config.log_every,
         "images_per_step": config.batch_size * (1 + 2 * config.mu),
         "window_steps_per_sec": rates,
         "median_steps_per_sec": float(np.median(plain)) if plain else None,
         "wall_s": wall}
  if timer is not None:
    out["host"] = report_breakdown(timer, t_end, args.steps, config, data)
    out["dispatch_us"] = dispatch_cost(config, data)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)


def report_breakdown(timer: HostTimer, t_end: float, steps: int, config, data) -> dict:
  """Prints and returns the host time per step (µs), from the first step after compile."""
  loop_s = t_end - timer.first_dispatch_end
  n = steps - 1
  parts = {k: 1e6 * v / n for k, v in timer.seconds.items()}
  parts["loop's own Python (the rest)"] = 1e6 * (loop_s - sum(timer.seconds.values())) / n
  # As many steps as the loop ran: the same length of run, so that a clock that drifts
  # over a longer run (power, heat) cannot pass for host cost.
  b2b = back_to_back(config, data, steps)
  print(f"\nhost time per step, over the {n} steps after the compiling first one "
        f"(loop wall {loop_s:.2f}s = {1e6 * loop_s / n:.0f} µs/step; the same step "
        f"back to back: {1e6 * b2b:.0f} µs/step):")
  rows = {"loop wall per step": 1e6 * loop_s / n, "back-to-back step": 1e6 * b2b,
          "loop minus back to back (host cost added by the loop)":
              1e6 * (loop_s / n - b2b)}
  for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
    print(f"  {v:9.1f} µs  {k}  ({timer.calls.get(k, '-')} calls)")
  for k, v in rows.items():
    print(f"  {v:9.1f} µs  = {k}")
  return {"per_step_us": parts, **{k: v for k, v in rows.items()},
          "calls": dict(timer.calls)}


if __name__ == "__main__":
  main()
