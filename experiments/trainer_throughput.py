"""The real trainer's speed on an accelerator, without TensorFlow or the dataset.

Runs :func:`dlpl_jax.trainer.train_and_evaluate` (logging, evaluations, pseudo-label
statistics, orbax checkpoints, the progress bar) with a full-scale config on synthetic
CIFAR-sized uint8 data, and prints the trainer's own steps/s (``train/steps_per_sec`` in
metrics.jsonl, one value per ``log_every`` window; the windows after an evaluation or
a checkpoint are slower, and are shown but left out of the median).
:mod:`dlpl_jax.bench` times the step alone; this shows what a run gets.

  python -m experiments.trainer_throughput [--config experiments/cifar10_4shot.py]
      [--steps 2048] [--dtype bfloat16] [--workdir DIR]

Needs ml_collections (config files) but not TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import jax
import numpy as np

from dlpl_jax import configs
from dlpl_jax import input_pipeline
from dlpl_jax import metrics
from dlpl_jax import trainer


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="experiments/cifar10_4shot.py")
  p.add_argument("--steps", type=int, default=2048)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--unlabeled", type=int, default=50_000,
                 help="synthetic unlabeled images held on the device (CIFAR: 50k)")
  p.add_argument("--workdir", default="/tmp/trainer_throughput")
  args = p.parse_args()
  if args.steps < 256:
    p.error(f"--steps must be >= 256 (two 128-step windows), got {args.steps}")
  config = configs.load_config_file(args.config)
  config.unlock()
  config.total_steps = args.steps
  config.dtype = args.dtype
  config.log_every = 128
  config.eval_every = args.steps // 2
  config.checkpoint_every = args.steps // 2
  config.progress = False
  config.lock()
  data = input_pipeline.synthetic(config.num_classes, labeled_per_class=4,
                                  unlabeled=args.unlabeled, test=10_000)
  shutil.rmtree(args.workdir, ignore_errors=True)
  t = time.time()
  summary = trainer.train_and_evaluate(config, args.workdir, data=data)
  wall = time.time() - t
  rows = metrics.read_jsonl(os.path.join(args.workdir, "metrics.jsonl"))
  train_rows = [r for r in rows if r.get("kind") == "train" and "train/steps_per_sec" in r]
  rates = [r["train/steps_per_sec"] for r in train_rows]
  steps_with_work = set(range(args.steps // 2, args.steps + 1, args.steps // 2))
  # The rate is taken at the log before an eval/checkpoint runs, so their time lands in
  # the window after them.
  plain = [r["train/steps_per_sec"] for r in train_rows[1:]
           if r["step"] - config.log_every not in steps_with_work]
  dev = jax.devices()[0]
  print(f"{jax.device_count()} x {dev.device_kind}, jax {jax.__version__}, {config.model}, "
        f"{config.dtype}, {args.steps} steps of {config.batch_size * (1 + 2 * config.mu)} "
        f"images, eval of 10000 + checkpoint every {args.steps // 2} steps")
  print("trainer steps/s per window of", config.log_every, "steps:",
        " ".join(f"{x:.1f}" for x in rates))
  if plain:
    print(f"trainer steps/s, median of windows without eval/checkpoint (first skipped): "
          f"{np.median(plain):.2f}")
  print(f"wall {wall:.1f}s for the whole call (compile, {args.steps} steps, evals, "
        f"checkpoints); final EMA top-1 on the synthetic test set "
        f"{summary['final_top1']:.2f}%")


if __name__ == "__main__":
  main()
