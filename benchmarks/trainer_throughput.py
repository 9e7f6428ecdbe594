"""The real trainer's speed, without TensorFlow or the dataset, and where its host time
per step goes.

Runs :func:`dlpl_jax.training.loop.train_and_evaluate` (logging, evaluations,
pseudo-label statistics, orbax checkpoints, progress) with a full-scale config on
synthetic CIFAR-sized uint8 data, and prints the trainer's own steps/s
(``train/steps_per_sec`` in metrics.jsonl, one value per ``log_every`` window; the
windows after an evaluation or a checkpoint are slower, and are shown but left out of
the median). ``dlpl-bench`` times the step alone; this shows what a run gets.

  python -m benchmarks.trainer_throughput [--config experiments/cifar10_4shot.py[:VARIANT]]
      [--steps 2048] [--dtype bfloat16] [--workdir DIR] [--json FILE]

``--host_breakdown`` adds where the loop's host time per step goes (the loop's own
stopwatch, ``host_seconds`` in summary.json: dispatching the step, waiting for the
device, logging, evaluating, checkpointing) beside the same step dispatched back to
back from the same set-up (:mod:`dlpl_jax.training.setup`, as ``dlpl-bench``), so that
``loop per step - back to back per step`` is the host cost the loop adds. Use a tiny
model to make the host visible, e.g. on a CPU:

  python -m benchmarks.trainer_throughput --config experiments/cifar10_4shot.py:smoke \\
      --steps 2048 --batch_size 4 --mu 1 --unlabeled 2000 --test 500 --host_breakdown

Needs ml_collections (config files) but not TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import jax
import numpy as np

from dlpl_jax import configs
from dlpl_jax.data import in_memory
from dlpl_jax.training import loop
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import metrics
from dlpl_jax.training import setup


def back_to_back(config, data, steps: int) -> float:
  """Seconds per step of the run's step dispatched ``steps`` times, synced once."""
  spec = setup.read(config)
  mesh = mesh_lib.make_mesh()
  state = setup.new_state(spec, mesh, read_init=False)
  inp = setup.make_input(spec, mesh, data)
  for _ in range(3):  # compile and warm up
    state, m = inp.step(state)
  jax.block_until_ready((state, m))
  t = time.perf_counter()
  for _ in range(steps):
    state, m = inp.step(state)
  jax.block_until_ready((state, m))
  return (time.perf_counter() - t) / steps


def host_breakdown(summary: dict, steps: int, config, data) -> dict:
  """Prints and returns the loop's host time per step (µs) against the same step back
  to back, over the steps after the compiling first one."""
  n = steps - 1
  seconds = dict(summary["host_seconds"])
  loop_us = 1e6 * seconds.pop("loop") / n
  parts = {k: 1e6 * v / n for k, v in seconds.items()}
  parts["loop's own Python (the rest)"] = loop_us - sum(parts.values())
  # As many steps as the loop ran: the same length of run, so that a clock that drifts
  # over a longer run (power, heat) cannot pass for host cost.
  b2b_us = 1e6 * back_to_back(config, data, steps)
  rows = {"loop wall per step": loop_us, "back-to-back step": b2b_us,
          "loop minus back to back (host cost added by the loop)": loop_us - b2b_us}
  print(f"\nhost time per step, over the {n} steps after the compiling first one:")
  for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
    print(f"  {v:9.1f} µs  {k}")
  for k, v in rows.items():
    print(f"  {v:9.1f} µs  = {k}")
  return {"per_step_us": parts, **rows}


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
                 help="where the loop's host time per step goes (see the docstring)")
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
  data = in_memory.synthetic(config.num_classes, labeled_per_class=4,
                             unlabeled=args.unlabeled, test=args.test)
  shutil.rmtree(args.workdir, ignore_errors=True)
  t = time.perf_counter()
  summary = loop.train_and_evaluate(
      config, args.workdir, data=data,
      stop_at=args.steps if config.total_steps > args.steps else None)
  wall = time.perf_counter() - t
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
  if args.host_breakdown:
    out["host"] = host_breakdown(summary, args.steps, config, data)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
