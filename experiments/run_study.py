"""Runs the CPU study (experiments/study_cpu.py): FixMatch and DebiasPL, seeds 0 and 1.

  python -m experiments.run_study [--runs runs/study] [--out experiments/results]

Each run is resumable (re-running skips finished runs and resumes unfinished ones).
Writes ``OUT/study_cpu.md`` (the table: test accuracy, pseudo-label accuracy and
imbalance per method and seed, wall time, hardware, command) and the comparison plots
of seed 0 (``OUT/study_cpu/``) from :mod:`dlpl_jax.analyze`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from dlpl_jax import analyze
from dlpl_jax import host
from dlpl_jax import metrics as metrics_lib
from dlpl_jax import trainer
from experiments import study_cpu

METHODS = ("fixmatch", "debiaspl")
SEEDS = (0, 1)


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    model = platform.processor() or "unknown CPU"
  return f"{model}, {os.cpu_count()} vCPUs"


def _row(method: str, seed: int, wd: str) -> dict:
  evals = [r for r in metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
           if r["kind"] == "eval"]
  evals = list({r["step"]: r for r in evals}.values())
  last = evals[-1]
  all_pl = metrics_lib.pseudo_label_stats(last["pseudo/confusion"], "pseudo")
  conf_pl = metrics_lib.pseudo_label_stats(last["pseudo_masked/confusion"], "pseudo_masked")
  timing = json.load(open(os.path.join(wd, "study_time.json")))
  return {
      "method": method, "seed": seed, "steps": last["step"],
      "top1_final": last["eval/top1"],
      "top1_median_last3": float(np.median([r["eval/top1"] for r in evals[-3:]])),
      "pl_acc": all_pl["pseudo/acc"], "pl_acc_masked": conf_pl["pseudo_masked/acc"],
      "mask_rate": sum(conf_pl["pseudo_masked/counts"]) / max(sum(all_pl["pseudo/counts"]), 1),
      "pl_imbalance": all_pl["pseudo/imbalance"], "pl_kl": all_pl["pseudo/kl_uniform"],
      "pred_imbalance": max(last["eval/predicted"]) / max(min(last["eval/predicted"]), 1),
      "wall_min": timing["seconds"] / 60,
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--runs", default="runs/study")
  ap.add_argument("--out", default="experiments/results")
  args = ap.parse_args()
  host.configure()  # data folder and XLA:CPU flag, as `make train` gets them
  rows = []
  for seed in SEEDS:
    for method in METHODS:
      wd = os.path.join(args.runs, f"{method}_s{seed}")
      c = study_cpu.get_config(method)
      c.seed = seed
      c.labeled_seed = seed
      done = os.path.exists(os.path.join(wd, "study_time.json"))
      if not done:
        print(f"=== {method}, seed {seed} -> {wd}", flush=True)
        t0 = time.time()
        prev = 0.0
        tpath = os.path.join(wd, "study_time.partial")
        if os.path.exists(tpath):
          prev = float(open(tpath).read())
        summary = trainer.train_and_evaluate(c, wd)
        elapsed = prev + time.time() - t0
        if summary["interrupted"]:
          with open(tpath, "w") as f:
            f.write(str(elapsed))
          raise SystemExit("interrupted; re-run to resume")
        with open(os.path.join(wd, "study_time.json"), "w") as f:
          json.dump({"seconds": elapsed}, f)
      rows.append(_row(method, seed, wd))

  os.makedirs(args.out, exist_ok=True)
  plots = analyze.analyze([os.path.join(args.runs, "fixmatch_s0"),
                           os.path.join(args.runs, "debiaspl_s0")],
                          os.path.join(args.out, "study_cpu"))
  lines = [
      "# CPU study: FixMatch vs DebiasPL, CIFAR-10, 4 labels per class",
      "",
      f"Command: `make study` (experiments/study_cpu.py: cnn_small, batch 16, mu 4, "
      f"{study_cpu.STEPS} steps, threshold 0.95, tau 0.4, marginal momentum 0.99).",
      f"Hardware: {_cpu()} (about one core's worth of throughput), CPU-only JAX.",
      f"Total wall time: {sum(r['wall_min'] for r in rows):.1f} min.",
      "",
      "Pseudo-label columns are over the last evaluation window (the last 250 steps' "
      "unlabeled batches); imbalance = most / least frequent pseudo-label class; KL = "
      "KL(pseudo-label distribution || uniform) in nats; test predicted imbalance = the "
      "same ratio for the EMA model's test-set predictions.",
      "",
      "| method | seed | test top-1 final | median last 3 evals | pseudo-label acc (all) | "
      "pseudo-label acc (confident) | mask rate | pseudo-label imbalance | KL to uniform | "
      "test predicted imbalance | wall min |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  f = lambda x, spec: "-" if x is None else format(x, spec)  # None: undefined
  for r in rows:
    lines.append(
        f"| {r['method']} | {r['seed']} | {r['top1_final']:.2f} | {r['top1_median_last3']:.2f} "
        f"| {f(r['pl_acc'], '.3f')} | {f(r['pl_acc_masked'], '.3f')} | {r['mask_rate']:.3f} "
        f"| {f(r['pl_imbalance'], '.1f')} | {f(r['pl_kl'], '.3f')} | {r['pred_imbalance']:.1f} "
        f"| {r['wall_min']:.1f} |")
  lines += ["", "Plots (seed 0, FixMatch vs DebiasPL):", ""]
  lines += [f"- `{os.path.relpath(p, args.out)}`" for p in plots if p.endswith(".png")]
  with open(os.path.join(args.out, "study_cpu.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(args.out, "study_cpu.json"), "w") as f:
    json.dump(rows, f, indent=2)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
