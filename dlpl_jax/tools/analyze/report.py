"""The figures written to files and ``report.md``: :func:`analyze`.

Panels (one run, or the two runs side by side; each figure's title names the run(s)):

* ``a_proportions.png`` -- a: each class's share of the pseudo-labels in each eval
  window (column sums of ``pseudo/confusion``), dashed 1/C (the paper's Figure 1);
  a2: the same for the confident (masked) pseudo-labels.
* ``b_confusion.png`` -- the row-normalised pseudo-label confusion matrix on the
  unlabeled set, summed over the last ``last_frac`` of the eval windows; each row is
  labelled with its number of unlabeled images ``n``.
* ``c_precision_recall.png`` -- per-class pseudo-label precision and recall against the
  class's share of the pseudo-labels (same windows as b).
* ``d_similarity.png`` -- cosine similarity of the EMA model's class-mean penultimate
  features (``class_features.npz``, last eval); the similarity rows of the most and
  least pseudo-labelled classes (bars from 0, axis up to 1); each class's mean
  similarity to the others against its pseudo-label share.
* ``curves.png`` -- test top-1, pseudo-label imbalance (max/min count) and KL to
  uniform per eval window.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from dlpl_jax import errors
from dlpl_jax.tools.analyze.plots import (plot_confusion, plot_curves,
                                          plot_precision_recall, plot_proportions,
                                          plot_similarity, plot_similarity_rows,
                                          plot_similarity_vs_share)
from dlpl_jax.tools.analyze.runs import (ALL, MASKED, NothingToPlotError, Run, _num,
                                         load_run, nothing_to_plot)
from dlpl_jax.tools.analyze.stats import (extremes, proportions, window_confusion,
                                          window_stat)


def _figure(nrows: int, ncols: int, w: float, h: float, **kw):
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
  FigureCanvasAgg(fig)  # no pyplot and no global backend change
  axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
  return fig, axes


def _save(fig, out_dir: str, name: str, written: list[str], runs: Sequence[Run]) -> None:
  """Saves ``fig`` as ``out_dir/name`` under a title naming the run(s)."""
  fig.suptitle(" vs ".join(r.label for r in runs), fontsize=11)
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=110)
  written.append(path)


def _features(run: Run) -> np.ndarray | None:
  if run.features is None:
    return None
  m = np.asarray(run.features["class_means"])
  return m if m.ndim == 2 and m.shape[0] == run.num_classes else None


def _fmt(x: Any, pattern: str = "{:.2f}") -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  return pattern.format(x)


def _run_facts(run: Run, last_frac: float) -> dict[str, str]:
  """The report's rows for one run (the same keys for every run, so two runs share a
  table; a missing value is "–")."""
  ev = run.evals
  total = run.config.get("total_steps")
  last_step = max([r.get("step", 0) for r in run.records], default=0)
  status = ("finished" if total and ev and ev[-1]["step"] >= int(total)
            else "running or interrupted")
  top1 = [v for v in (_num(r.get("eval/top1")) for r in ev) if math.isfinite(v)]
  last = ev[-1] if ev else {}
  names = [f"class {x}" if x.isdigit() else x for x in run.class_names]
  facts = {
      "workdir": f"`{run.workdir}`",
      "method": run.method,
      "dataset": f"{run.config.get('dataset', '?')} ({run.num_classes} classes)",
      "steps": f"{last_step} / {total if total else '?'} ({status})",
      "evals": f"{len(ev)}" + (f" (last at step {ev[-1]['step']})" if ev else ""),
      "final test top-1": _fmt(top1[-1] if top1 else None, "{:.2f}%"),
      "median test top-1 of the last 20 evals":
          _fmt(float(np.median(top1[-20:])) if top1 else None, "{:.2f}%")
          + (f" (of {len(top1)})" if 0 < len(top1) < 20 else ""),
  }
  if ev:
    start = ev[-2]["step"] if len(ev) > 1 else 0
    facts["last eval window"] = f"steps {start}-{last['step']}"

    def stat(name: str, pattern: str) -> str:  # "–": undefined (e.g. no confident labels)
      return " / ".join(_fmt(window_stat(last, prefix, name), pattern)
                        for prefix in ("pseudo", "pseudo_masked"))

    facts["pseudo-label acc, all / confident (last window)"] = stat("acc", "{:.3f}")
    facts["imbalance max/min count, all / confident (last window)"] = stat(
        "imbalance", "{:.1f}")
    facts["KL to uniform (nats), all / confident (last window)"] = stat(
        "kl_uniform", "{:.3f}")
    facts["KL to the true class shares of the same images (nats), all / confident (last "
          "window)"] = stat("kl_true", "{:.3f}")
    marginal = np.asarray([_num(v) for v in (last.get("marginal") or [])])
    if marginal.size == run.num_classes and np.isfinite(marginal).all():
      hi, lo = int(np.argmax(marginal)), int(np.argmin(marginal))
      facts["running marginal of the pseudo-labels, max / min (last eval)"] = (
          f"{names[hi]} {100 * marginal[hi]:.1f}% / {names[lo]} {100 * marginal[lo]:.1f}%")
  for key, tag in ((ALL, "all"), (MASKED, "confident")):
    conf, desc = window_confusion(ev, key, last_frac)
    if conf is None:
      continue
    if key == ALL:
      facts["windows of panels b-d"] = desc
    if conf.sum() == 0:
      continue
    hi, p_hi, lo, p_lo = extremes(conf)
    facts[f"most / least predicted, {tag} (panels b-d windows)"] = (
        f"{names[hi]} {100 * p_hi:.1f}% / {names[lo]} {100 * p_lo:.1f}% "
        f"(uniform {100 / len(names):.1f}%)")
    if key == ALL:
      true = conf.sum(axis=1) / conf.sum()
      # Flag a skewed unlabeled set (long-tailed runs), not the sampling noise of a few
      # hundred images.
      if conf.sum() >= 200 * len(names) and true.max() > 1.5 * true.min():
        facts["true classes of the unlabeled images (panels b-d windows)"] = (
            f"not balanced: {names[int(np.argmax(true))]} {100 * true.max():.1f}% ... "
            f"{names[int(np.argmin(true))]} {100 * true.min():.1f}%")
  return facts


def _report(runs: Sequence[Run], pngs: list[str], notes: list[str], out_dir: str,
            last_frac: float) -> str:
  facts = [_run_facts(r, last_frac) for r in runs]
  lines = ["# Pseudo-label analysis", ""]
  if len(runs) == 1:
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts[0].items()]
  else:
    keys = list(dict.fromkeys(k for f in facts for k in f))
    lines += ["| | " + " | ".join(r.label for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    lines += [f"| {k} | " + " | ".join(f.get(k, "–") for f in facts) + " |" for k in keys]
  lines += ["", "Pseudo-label windows: each eval record's confusion counts the unlabeled "
            "images pseudo-labelled since the previous eval (rows = true class, columns = "
            "pseudo-label); panels b-d sum the last "
            f"{100 * last_frac:.0f}% of the windows.", ""]
  if notes:
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
  lines += ["## Figures", ""]
  for p in pngs:
    rel = os.path.relpath(p, out_dir)
    lines += [f"- [{rel}]({rel})", "", f"  ![{rel}]({rel})", ""]
  return "\n".join(lines)


def _notes(runs: Sequence[Run]) -> list[str]:
  """The report's notes on the runs' feature files and class counts."""
  notes = []
  for r in runs:
    if _features(r) is None:
      notes.append(f"{r.label}: no usable class_features.npz; the similarity panel (d) "
                   "is skipped.")
    elif r.features is not None and "step" in r.features:
      notes.append(f"{r.label}: class-mean features from the eval at step "
                   f"{int(r.features['step'])} (EMA model, test set).")
  if len(runs) == 2 and runs[0].num_classes != runs[1].num_classes:
    notes.append("the two runs have different numbers of classes.")
  return notes


def _draw(runs: Sequence[Run], out_dir: str, last_frac: float) -> list[str]:
  """Panels a-d and the curves, one PNG each in ``out_dir``; returns their paths."""
  written: list[str] = []
  n = len(runs)

  def title(r: Run, what: str) -> str:
    return f"{r.label}\n{what}" if n == 2 else what

  # a, a2: proportions, rows = all/confident, columns = runs, shared y.
  fig, axes = _figure(2, n, 6.2 if n == 1 else 5.6, 3.4, sharey="row", sharex="col")
  for j, r in enumerate(runs):
    for i, key in enumerate((ALL, MASKED)):
      tag = "all pseudo-labels" if key == ALL else "confident pseudo-labels (mask = 1)"
      plot_proportions(r.records, axes[i, j], key, r.class_names,
                       title=title(r, f"({'a' if i == 0 else 'a2'}) class shares, {tag}"),
                       legend=(j == n - 1))
      if j > 0 and proportions(r.evals, key)[1].size:  # shared y, but labelled, in case
        axes[i, j].tick_params(labelleft=True)            # the other panel is empty
  _save(fig, out_dir, "a_proportions.png", written, runs)

  windows = [window_confusion(r.evals, ALL, last_frac) for r in runs]
  side = 5.2 if max(r.num_classes for r in runs) <= 10 else 6.0
  # b: confusion.
  fig, axes = _figure(1, n, side, side * 1.08)
  for j, (r, (conf, desc)) in enumerate(zip(runs, windows)):
    plot_confusion(conf, axes[0, j], r.class_names,
                   title=title(r, f"(b) pseudo-label confusion, row-normalised\n{desc}"))
  _save(fig, out_dir, "b_confusion.png", written, runs)

  # c: precision / recall vs share.
  fig, axes = _figure(1, n, 5.4, 4.4, sharey=True)
  for j, (r, (conf, desc)) in enumerate(zip(runs, windows)):
    plot_precision_recall(conf, axes[0, j], r.class_names,
                          title=title(r, f"(c) pseudo-label precision / recall\n{desc}"))
  _save(fig, out_dir, "c_precision_recall.png", written, runs)

  # d: similarity heatmap, bars of the extremes, mean similarity vs share.
  fig, axes = _figure(n, 3, 5.0, 4.6)
  for i, (r, (conf, desc)) in enumerate(zip(runs, windows)):
    feats = _features(r)
    step = (f", step {int(r.features['step'])}" if feats is not None and
            "step" in r.features else "")
    plot_similarity(feats, axes[i, 0], r.class_names,
                    title=title(r, f"(d) cosine similarity, class-mean features{step}"))
    plot_similarity_rows(feats, conf, axes[i, 1], r.class_names,
                         title=title(r, f"most vs least pseudo-labelled class\n{desc}"))
    plot_similarity_vs_share(feats, conf, axes[i, 2], r.class_names,
                             title=title(r, "mean similarity vs share"))
  _save(fig, out_dir, "d_similarity.png", written, runs)

  # Curves: top-1, imbalance, KL.
  fig, axes = _figure(1, 3, 4.8, 3.6)
  plot_curves(runs, axes[0])
  _save(fig, out_dir, "curves.png", written, runs)

  return written


def analyze(workdirs: Sequence[str], out_dir: str | None = None,
            last_frac: float = 0.25) -> list[str]:
  """Writes the PNGs and ``report.md`` for one run or two runs side by side.

  Args:
    workdirs: one or two run folders.
    out_dir: output folder; default ``WORKDIR/analysis`` or
      ``WORKDIR/analysis_vs_<basename of WORKDIR2>``.
    last_frac: fraction of the eval windows (the last ones, at least one) that panels
      b-d sum.

  Returns:
    The written paths (PNGs, then report.md).

  Raises:
    FileNotFoundError: a workdir does not exist.
    UsageError: a run's files cannot be read or do not agree (:func:`load_run`), or
      ``out_dir`` cannot be written (nothing is written).
    NothingToPlotError: a run has no evaluation yet (nothing is written).
  """
  if not 1 <= len(workdirs) <= 2:
    raise ValueError(f"give one or two workdirs, got {len(workdirs)}")
  runs = [load_run(w) for w in workdirs]
  flag = "--out"
  if out_dir is None:
    out_dir = os.path.join(workdirs[0], "analysis" if len(runs) == 1 else
                           "analysis_vs_" + runs[1].name)
    flag = "the output folder"
  errors.check_output(out_dir, flag, folder=True)
  for r in runs:
    why = nothing_to_plot(r)
    if why is not None:
      raise NothingToPlotError(why)
  os.makedirs(out_dir, exist_ok=True)
  written = _draw(runs, out_dir, last_frac)
  report = os.path.join(out_dir, "report.md")
  with open(report, "w", encoding="utf-8") as f:
    f.write(_report(runs, list(written), _notes(runs), out_dir, last_frac))
  written.append(report)
  return written
