"""Runs the CPU studies: FixMatch and DebiasPL, seeds 0 and 1.

  python -m experiments.run_study [--study balanced|imbalanced] [--runs DIR] [--out DIR]

* ``balanced`` (``make study``, experiments/study_cpu.py): CIFAR-10, 4 labels per class.
  Writes ``OUT/study_cpu.md`` (test accuracy, pseudo-label accuracy and imbalance per
  method and seed, wall time, hardware, command), ``OUT/study_cpu.json`` and the
  comparison plots of seed 0 (``OUT/study_cpu/``).
* ``imbalanced`` (``make study-imbalanced``, experiments/study_imbalanced.py):
  CIFAR-10-LT (gamma = 100) and the mismatch setting. Writes
  ``OUT/study_imbalanced.md`` (top-1, head and tail recall, pseudo-label share per
  class against the TRUE share of the unlabeled images and the KL between them, wall
  time, hardware, command), ``OUT/study_imbalanced.json`` and, per setting, the plots
  of seed 0 (``OUT/study_imbalanced/SETTING/``).

Each run is resumable (re-running skips finished runs and resumes unfinished ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from dlpl_jax.tools import analyze
from dlpl_jax import host
from dlpl_jax.training import metrics as metrics_lib
from dlpl_jax.training import loop as trainer
from experiments import study_cpu
from experiments import study_imbalanced

METHODS = ("fixmatch", "debiaspl")
SEEDS = (0, 1)
HEAD, TAIL = (0, 1, 2), (7, 8, 9)  # the labeled set's 3 largest and 3 smallest classes


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


def _train(c, wd: str) -> None:
  """Trains ``c`` in ``wd`` unless finished; keeps the wall time across resumes."""
  if os.path.exists(os.path.join(wd, "study_time.json")):
    return
  print(f"=== {c.method}, seed {c.seed} -> {wd}", flush=True)
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


def _config(get_config, variant: str, seed: int):
  c = get_config(variant)
  c.seed = seed
  c.labeled_seed = seed
  return c


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--study", choices=("balanced", "imbalanced"), default="balanced")
  ap.add_argument("--runs", default=None,
                  help="run folders (default runs/study, runs/study_imbalanced)")
  ap.add_argument("--out", default="experiments/results")
  ap.add_argument("--settings", default=",".join(study_imbalanced.SETTINGS),
                  help="imbalanced study: which settings to run and report (lt,mismatch)")
  args = ap.parse_args()
  host.configure()  # data folder and XLA:CPU flag, as `make train` gets them
  if args.study == "imbalanced":
    settings = tuple(filter(None, args.settings.split(",")))
    unknown = set(settings) - set(study_imbalanced.SETTINGS)
    if unknown or not settings:
      ap.error(f"--settings: choose from {','.join(study_imbalanced.SETTINGS)}")
    imbalanced(args.runs or "runs/study_imbalanced", args.out, settings)
  else:
    balanced(args.runs or "runs/study", args.out)


def balanced(runs: str, out: str) -> None:
  rows = []
  for seed in SEEDS:
    for method in METHODS:
      wd = os.path.join(runs, f"{method}_s{seed}")
      _train(_config(study_cpu.get_config, method, seed), wd)
      rows.append(_row(method, seed, wd))

  os.makedirs(out, exist_ok=True)
  plots = analyze.analyze([os.path.join(runs, "fixmatch_s0"),
                           os.path.join(runs, "debiaspl_s0")],
                          os.path.join(out, "study_cpu"))
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
  lines += [f"- `{os.path.relpath(p, out)}`" for p in plots if p.endswith(".png")]
  with open(os.path.join(out, "study_cpu.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(out, "study_cpu.json"), "w") as f:
    json.dump(rows, f, indent=2)
  print("\n".join(lines))


def _imbalanced_row(setting: str, method: str, seed: int, wd: str) -> dict:
  """One run's numbers: the test set's head / tail recall from the last evaluation; the
  pseudo-label shares, the true shares of the same unlabeled images and the KL between
  them over the last quarter of the evaluation windows (analyze.window_confusion)."""
  evals = analyze.eval_records(metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl")))
  last = evals[-1]
  per_class = np.asarray(last["eval/per_class"], np.float64)
  conf, window = analyze.window_confusion(evals, analyze.ALL, 0.25)
  conf_m, _ = analyze.window_confusion(evals, analyze.MASKED, 0.25)
  stats = metrics_lib.pseudo_label_stats(conf, "pseudo")
  stats_m = metrics_lib.pseudo_label_stats(conf_m, "pseudo_masked")
  total = conf.sum()
  timing = json.load(open(os.path.join(wd, "study_time.json")))
  return {
      "setting": setting, "method": method, "seed": seed, "steps": last["step"],
      "top1_final": last["eval/top1"],
      "top1_median_last3": float(np.median([r["eval/top1"] for r in evals[-3:]])),
      "head_recall": float(per_class[list(HEAD)].mean()),
      "tail_recall": float(per_class[list(TAIL)].mean()),
      "per_class_recall": per_class.tolist(),
      "window": window,
      "true_share": (conf.sum(axis=1) / total).tolist(),
      "pl_share": (conf.sum(axis=0) / total).tolist(),
      "pl_share_masked": (conf_m.sum(axis=0) / max(conf_m.sum(), 1)).tolist(),
      "pl_acc": stats["pseudo/acc"],
      "mask_rate": float(conf_m.sum() / max(total, 1)),
      "kl_true": stats["pseudo/kl_true"], "kl_true_masked": stats_m["pseudo_masked/kl_true"],
      "kl_uniform": stats["pseudo/kl_uniform"],
      "wall_min": timing["seconds"] / 60,
  }


def imbalanced(runs: str, out: str,
               settings: tuple[str, ...] = study_imbalanced.SETTINGS) -> None:
  rows = []
  for setting in settings:
    for seed in SEEDS:
      for method in METHODS:
        wd = os.path.join(runs, f"{setting}_{method}_s{seed}")
        _train(_config(study_imbalanced.get_config, f"{setting},{method}", seed), wd)
        rows.append(_imbalanced_row(setting, method, seed, wd))

  os.makedirs(out, exist_ok=True)
  plots = {}
  for setting in settings:
    plots[setting] = analyze.analyze(
        [os.path.join(runs, f"{setting}_fixmatch_s0"),
         os.path.join(runs, f"{setting}_debiaspl_s0")],
        os.path.join(out, "study_imbalanced", setting))
  f = lambda x, spec: "-" if x is None else format(x, spec)  # None: undefined
  lines = [
      "# CPU study: FixMatch vs DebiasPL on CIFAR-10-LT (gamma = 100) and a mismatch",
      "",
      f"Command: `make study-imbalanced` (experiments/study_imbalanced.py: cnn_small, batch "
      f"16, mu 2, {study_imbalanced.STEPS} steps, threshold 0.95, tau 0.4, marginal "
      "momentum 0.99; labeled 500 ... 5 per class (gamma = 100); unlabeled 4000 ... 40 per "
      "class in `lt`, 4000 per class in `mismatch`; balanced test set).",
      f"Hardware: {_cpu()} (about one core's worth of throughput), CPU-only JAX.",
      f"Total wall time: {sum(r['wall_min'] for r in rows):.1f} min.",
      "",
      "Head / tail recall: mean test recall of classes 0-2 / 7-9 (the labeled set's 3 "
      "largest / smallest classes) at the last evaluation. Pseudo-label columns are over "
      "the last quarter of the evaluation windows; KL to true = KL(pseudo-label shares || "
      "true class shares of the same unlabeled images) in nats, the bias measure when the "
      "unlabeled data are not balanced; KL to uniform for comparison.",
      "",
      "| setting | method | seed | test top-1 final | median last 3 | head recall | "
      "tail recall | pseudo-label acc | mask rate | KL to true, all | KL to true, "
      "confident | KL to uniform, all | wall min |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['setting']} | {r['method']} | {r['seed']} | {r['top1_final']:.2f} "
        f"| {r['top1_median_last3']:.2f} | {r['head_recall']:.1f} | {r['tail_recall']:.1f} "
        f"| {f(r['pl_acc'], '.3f')} | {r['mask_rate']:.3f} | {f(r['kl_true'], '.3f')} "
        f"| {f(r['kl_true_masked'], '.3f')} | {f(r['kl_uniform'], '.3f')} "
        f"| {r['wall_min']:.1f} |")
  for setting in settings:
    these = [r for r in rows if r["setting"] == setting]
    lines += ["", f"Pseudo-label share per class (%), `{setting}`, all pseudo-labels, against "
              "the true share of the same unlabeled images:", "",
              "| class | true share | " + " | ".join(
                  f"{r['method']} s{r['seed']}" for r in these) + " |",
              "|---|---|" + "---|" * len(these)]
    for k in range(len(these[0]["true_share"])):
      lines.append(f"| {k} | {100 * these[0]['true_share'][k]:.1f} | " + " | ".join(
          f"{100 * r['pl_share'][k]:.1f}" for r in these) + " |")
    lines += ["", f"Plots (`{setting}`, seed 0, FixMatch vs DebiasPL):", ""]
    lines += [f"- `{os.path.relpath(p, out)}`" for p in plots[setting] if p.endswith(".png")]
  with open(os.path.join(out, "study_imbalanced.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
  with open(os.path.join(out, "study_imbalanced.json"), "w") as fh:
    json.dump(rows, fh, indent=2)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
