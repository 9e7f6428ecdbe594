"""dlpl_jax.tools.analyze (``dlpl-analyze``) on fake workdirs: hand-computed proportions
and report numbers, one and two runs, both metric formats (derived pseudo-label
statistics in the eval record, or in the train record of the same step), a running job's
leftovers (torn line, one eval, no class features), a run with nothing to plot yet, the
figures' axes and legends, and bad input refused in one line."""

import json
import math
import os
import re

import numpy as np
import pytest

from dlpl_jax.tools import analyze
from dlpl_jax.tools.analyze import report as analyze_report
from dlpl_jax.training import metrics as metrics_lib

PNGS = ("a_proportions.png", "b_confusion.png", "c_precision_recall.png",
        "d_similarity.png", "curves.png")
CAT, DOG, DEER, BIRD, AUTO, TRUCK = 3, 5, 4, 2, 1, 9


def biased_confusion(bias: int) -> np.ndarray:
  """80 unlabeled images per true class; bird, deer and dog send ``bias`` each to cat,
  truck sends 10 to automobile."""
  conf = 80 * np.eye(10, dtype=int)
  for t in (DOG, DEER, BIRD):
    conf[t, CAT] += bias
    conf[t, t] -= bias
  conf[TRUCK, AUTO] += 10
  conf[TRUCK, TRUCK] -= 10
  return conf


def eval_record(step: int, conf, masked=None, top1: float = 50.0) -> dict:
  conf = np.asarray(conf)
  masked = conf // 2 if masked is None else np.asarray(masked)
  r = {"step": step, "kind": "eval", "eval/top1": top1,
       "eval/per_class": [top1] * len(conf), "eval/predicted": [50] * len(conf),
       "marginal": [1.0 / len(conf)] * len(conf), "pseudo/confusion": conf.tolist(),
       "pseudo_masked/confusion": masked.tolist()}
  r.update(metrics_lib.pseudo_label_stats(conf, "pseudo"))
  r.update(metrics_lib.pseudo_label_stats(masked, "pseudo_masked"))
  return r


def write_workdir(path, records, method="fixmatch", num_classes=10, features=True,
                  total_steps=800, torn=False, eval_every=100, log_every=50, means=None):
  """A run folder as the trainer leaves it: metrics.jsonl, config.json and (with
  ``features``) class_features.npz plus features/class_features_STEP.npz."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    if torn:
      f.write('{"step": 999, "kind": "eval", "pseudo/conf')
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"method": method, "dataset": "cifar10" if num_classes == 10 else "toy",
               "num_classes": num_classes, "total_steps": total_steps,
               "eval_every": eval_every, "log_every": log_every}, f)
  if features:
    if means is None:
      rng = np.random.default_rng(0)
      means = rng.normal(size=(num_classes, 16)) + 1.0
      if num_classes == 10:  # cat close to every class, above all bird, deer and dog
        means[CAT] = means.mean(axis=0) + 0.5 * means[[DOG, DEER, BIRD]].mean(axis=0)
    os.makedirs(os.path.join(path, "features"), exist_ok=True)
    steps = [r["step"] for r in records if r.get("kind") == "eval"]
    for step in steps:
      for name in ("class_features.npz", f"features/class_features_{step}.npz"):
        np.savez(os.path.join(path, name), step=step, class_means=means,
                 per_class_acc=np.full(num_classes, 50.0))
  return str(path)


def _null_nan(stats: dict) -> dict:
  """The new format writes an undefined accuracy as JSON null."""
  return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in stats.items()}


def new_format_records(windows, marginals, eval_every=100, log_every=50, top1=None):
  """metrics.jsonl records in the new format: each eval record holds ``eval/*`` and the
  two confusion matrices only; the train record of the same step holds ``marginal`` and
  the window's derived statistics (``null`` accuracy when undefined). ``windows``:
  ``(conf, masked)`` per eval window; ``marginals``: the marginal at each eval step (the
  train records between evals get a different, decoy one)."""
  out = []
  for e, ((conf, masked), marginal) in enumerate(zip(windows, marginals), 1):
    step = eval_every * e
    conf, masked = np.asarray(conf), np.asarray(masked)
    c = len(conf)
    for s in range(step - eval_every + log_every, step + 1, log_every):
      part = 1 if s == step else 2  # mid-window: half of the window so far
      r = {"step": s, "kind": "train", "train/loss": 1.0, "train/lr": 0.03,
           "train/mask_rate": 0.5,
           "marginal": list(marginal) if s == step else [1.0] + [0.0] * (c - 1)}
      r.update(_null_nan(metrics_lib.pseudo_label_stats(conf // part, "pseudo")))
      r.update(_null_nan(metrics_lib.pseudo_label_stats(masked // part, "pseudo_masked")))
      out.append(r)
    t = 40.0 + e if top1 is None else top1[e - 1]
    out.append({"step": step, "kind": "eval", "eval/top1": t, "eval/per_class": [t] * c,
                "eval/predicted": [50] * c, "pseudo/confusion": conf.tolist(),
                "pseudo_masked/confusion": masked.tolist()})
  return out


def old_format_records(windows, marginals, eval_every=100, top1=None):
  """The same windows in the old format: everything in the eval record."""
  out = []
  for e, ((conf, masked), marginal) in enumerate(zip(windows, marginals), 1):
    step = eval_every * e
    r = eval_record(step, conf, masked, top1=40.0 + e if top1 is None else top1[e - 1])
    r["marginal"] = list(marginal)
    out += [{"step": step - eval_every // 2, "kind": "train", "train/loss": 1.0,
             "pseudo/counts": [1] * len(conf), "pseudo/acc_all": 0.5}, r]
  return out


def study_windows(n=8):
  """Biased windows; the confident pseudo-labels of the first window are empty (their
  accuracy is undefined)."""
  windows, marginals = [], []
  for e in range(1, n + 1):
    conf = biased_confusion(5 * e)
    masked = np.where(np.eye(10, dtype=bool), conf * 3 // 4, conf // 4)
    windows.append((conf, np.zeros_like(conf) if e == 1 else masked))
    m = np.full(10, 0.09)
    m[CAT] = 0.19
    marginals.append((m / m.sum()).tolist())
  return windows, marginals


def cifar_records(biases=(5, 10, 15, 20, 25, 30, 20, 20), debiased=False):
  out = []
  for e, b in enumerate(biases, 1):
    step = 100 * e
    out.append({"step": step - 50, "kind": "train", "train/loss": 1.0,
                "pseudo/counts": [1] * 10})
    conf = biased_confusion(2 if debiased else b)
    # Confident pseudo-labels: 3/4 of the correct ones, 1/4 of the wrong ones.
    masked = np.where(np.eye(10, dtype=bool), conf * 3 // 4, conf // 4)
    out.append(eval_record(step, conf, masked, top1=40.0 + e + (5 if debiased else 0)))
  return out


def test_proportions_hand_values():
  evals = [eval_record(10, [[5, 0, 0], [0, 5, 0], [0, 0, 5]]),
           eval_record(20, [[4, 1, 0], [0, 5, 0], [0, 2, 3]]),
           eval_record(30, np.zeros((3, 3), int))]
  steps, props = analyze.proportions(evals)
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(props[0], [1 / 3] * 3)
  np.testing.assert_allclose(props[1], [4 / 15, 8 / 15, 3 / 15])
  assert np.isnan(props[2]).all()
  # Masked = conf // 2: step 20 -> [[2,0,0],[0,2,0],[0,1,1]], column sums [2, 3, 1].
  _, pm = analyze.proportions(evals, analyze.MASKED)
  np.testing.assert_allclose(pm[1], [2 / 6, 3 / 6, 1 / 6])
  # Last 50% of 3 windows = the last 2: steps 10-30.
  conf, desc = analyze.window_confusion(evals, last_frac=0.5)
  np.testing.assert_array_equal(conf, [[4, 1, 0], [0, 5, 0], [0, 2, 3]])
  assert desc == "steps 10-30 (last 2 of 3 eval windows)"
  assert analyze.extremes(conf) == (1, pytest.approx(8 / 15), 2, pytest.approx(3 / 15))


def test_one_run_panels_and_report(tmp_path):
  wd = write_workdir(tmp_path / "fm_run", cifar_records(), torn=True)
  out = str(tmp_path / "out")
  assert analyze.main([wd, "--out", out]) == 0
  for name in PNGS:
    assert os.path.getsize(os.path.join(out, name)) > 5000, name
  report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  # Last 25% of 8 windows = 2 windows of biased_confusion(20): cat gets 80 + 3 * 20 = 140
  # of 800 (17.5%); bird, deer and dog 60 (7.5%; bird is the first).
  assert "cat 17.5% / bird 7.5%" in report
  assert "steps 600-800 (last 2 of 8 eval windows)" in report
  assert "800 / 800 (finished)" in report
  assert "48.00%" in report  # final top-1
  acc = metrics_lib.pseudo_label_stats(biased_confusion(20))["pseudo/acc"]
  assert f"{acc:.3f}" in report  # (800 - 70) / 800 = 0.9125 -> "0.912" or "0.913"
  for name in PNGS:
    assert f"]({name})" in report


def test_two_runs_side_by_side(tmp_path):
  fm = write_workdir(tmp_path / "fm", cifar_records(), "fixmatch")
  dpl = write_workdir(tmp_path / "dpl", cifar_records(debiased=True), "debiaspl")
  assert analyze.main([fm, dpl]) == 0
  out = os.path.join(fm, "analysis_vs_dpl")  # the default for two runs
  for name in PNGS:
    assert os.path.getsize(os.path.join(out, name)) > 5000
  report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  assert "| fixmatch (fm) | debiaspl (dpl) |" in report
  # Debiased (bias 2): the most predicted is automobile, 80 + 10 of 800.
  assert "| cat 17.5% / bird 7.5%" in report
  assert f"| automobile {100 * (90 / 800):.1f}% / truck {100 * (70 / 800):.1f}%" in report


def test_running_job_leftovers_do_not_crash(tmp_path):
  # One eval, no class_features.npz, a torn last line, C = 3 (class indices as names).
  one = write_workdir(tmp_path / "one", [eval_record(10, [[4, 1, 0], [0, 5, 0], [0, 2, 3]])],
                      num_classes=3, features=False, torn=True)
  paths = analyze.analyze([one])
  assert all(os.path.getsize(p) > 0 for p in paths)
  report = open(paths[-1], encoding="utf-8").read()
  assert "no usable class_features.npz" in report
  assert "class 1 53.3% / class 2 20.0%" in report
  assert "running or interrupted" in report
  # A half-written class_features.npz reads as missing.
  with open(os.path.join(one, "class_features.npz"), "wb") as f:
    f.write(b"PK\x03\x04 torn")
  assert analyze.load_run(one).features is None


def test_nothing_to_plot_yet(tmp_path, one_error_line, python):
  wd = tmp_path / "early"
  os.makedirs(wd)
  with open(wd / "config.json", "w", encoding="utf-8") as f:
    json.dump({"method": "debiaspl", "dataset": "cifar10", "num_classes": 10,
               "total_steps": 1000, "eval_every": 500, "log_every": 10}, f)
  # No metrics.jsonl, an empty one, then train records only (and a torn line).
  for content, so_far in ((None, "no metrics.jsonl yet"), ("", "metrics.jsonl is empty"),
                          ("".join(json.dumps({"step": s, "kind": "train",
                                               "train/loss": 2.0}) + "\n"
                                   for s in (10, 20, 30)) + '{"st', "30 steps logged")):
    if content is not None:
      (wd / "metrics.jsonl").write_text(content, encoding="utf-8")
    assert analyze.main([str(wd)]) == 1
    line = one_error_line()
    assert "nothing to plot yet" in line and so_far in line, line
    assert "the first evaluation is written at step 500 (eval_every)" in line, line
    assert not (wd / "analysis").exists()  # no PNGs, not even an empty folder
  # total_steps below eval_every: the last step is the first evaluation.
  (wd / "config.json").write_text(json.dumps({"total_steps": 200, "eval_every": 500}))
  assert analyze.main([str(wd)]) == 1
  assert "at step 200 (total_steps" in one_error_line()
  # Past the first evaluation, whose line is torn: said so, not "written at step 200".
  (wd / "metrics.jsonl").write_text(
      json.dumps({"step": 200, "kind": "train", "train/loss": 2.0}) + "\n"
      + '{"step": 200, "kind": "ev', encoding="utf-8")
  assert analyze.main([str(wd)]) == 1
  line = one_error_line()
  assert "although the first is written at step 200" in line and "torn" in line, line
  # Compared with a run that has evaluations: still nothing plotted.
  one = write_workdir(tmp_path / "one", cifar_records())
  with pytest.raises(analyze.NothingToPlotError, match="early: nothing to plot yet"):
    analyze.analyze([one, str(wd)])
  assert not os.path.exists(os.path.join(one, "analysis_vs_early"))
  # What `make analyze` runs: the exit status and the one line on stderr.
  (wd / "config.json").unlink()
  proc = python(["-m", "dlpl_jax.analyze", str(wd)], timeout=120)
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr.count("\n") == 1 and "nothing to plot yet" in proc.stderr
  assert "(no config.json yet)" in proc.stderr


def test_missing_workdir_is_one_line(tmp_path, one_error_line):
  assert analyze.main([str(tmp_path / "nope")]) == 2
  assert "no such workdir" in one_error_line()
  (tmp_path / "file").write_text("x")
  assert analyze.main([str(tmp_path / "file")]) == 2
  assert "not a run folder" in one_error_line()


def test_import_without_tensorflow(python):
  code = ("import sys; sys.modules['tensorflow'] = None; import dlpl_jax.analyze; "
          "from dlpl_jax.tools import analyze; "
          "assert 'matplotlib.pyplot' not in sys.modules")
  proc = python(["-c", code], timeout=120)
  assert proc.returncode == 0, proc.stderr


def test_new_and_old_metric_formats_agree(tmp_path):
  windows, marginals = study_windows()
  new = write_workdir(tmp_path / "new", new_format_records(windows, marginals), "debiaspl")
  old = write_workdir(tmp_path / "old", old_format_records(windows, marginals), "debiaspl")
  # Statistics derived from the confusion matrices; marginal from the train record of the
  # eval step (not the decoy of the mid-window record).
  ev = analyze.load_run(new).evals
  assert [r["step"] for r in ev] == [100 * e for e in range(1, 9)]
  assert ev[-1]["marginal"] == pytest.approx(marginals[-1])
  assert ev[-1]["pseudo/counts"] == metrics_lib.pseudo_label_stats(windows[-1][0])[
      "pseudo/counts"]
  assert math.isnan(analyze.window_stat(ev[0], "pseudo_masked", "acc"))  # null, empty
  assert math.isnan(analyze.window_stat(ev[0], "pseudo_masked", "kl_uniform"))
  assert analyze.window_stat(ev[-1], "pseudo", "acc") == pytest.approx(
      metrics_lib.pseudo_label_stats(windows[-1][0])["pseudo/acc"])
  reports = {}
  for name, wd in (("new", new), ("old", old)):
    paths = analyze.analyze([wd])
    assert [os.path.basename(p) for p in paths] == list(PNGS) + ["report.md"]
    for p in paths[:-1]:
      assert os.path.getsize(p) > 5000, p
    reports[name] = [line.replace(f"({name})", "(RUN)") for line in open(
        paths[-1], encoding="utf-8").read().splitlines() if "| workdir |" not in line]
  assert reports["new"] == reports["old"]
  report = "\n".join(reports["new"])
  assert "debiaspl (RUN)" in report
  assert "| running marginal of the pseudo-labels, max / min (last eval) | cat 19.0% / " \
         "airplane 9.0% |" in report
  acc = metrics_lib.pseudo_label_stats(windows[-1][0])["pseudo/acc"]
  acc_m = metrics_lib.pseudo_label_stats(windows[-1][1])["pseudo/acc"]
  assert f"| {acc:.3f} / {acc_m:.3f} |" in report
  # Two runs, one per format.
  assert analyze.main([new, old]) == 0
  assert os.path.exists(os.path.join(new, "analysis_vs_old", "report.md"))


def test_new_format_nulls_and_first_window_only(tmp_path):
  # One window without any pseudo-label: every statistic undefined, shown as "–", and
  # null top-1 / marginal values do not crash.
  zero = np.zeros((10, 10), int)
  recs = new_format_records([(zero, zero)], [[0.1] * 10])
  recs[-1]["eval/top1"] = None
  recs[-2]["marginal"] = None
  wd = write_workdir(tmp_path / "nulls", recs, features=False)
  report = open(analyze.analyze([wd])[-1], encoding="utf-8").read()
  assert "| pseudo-label acc, all / confident (last window) | – / – |" in report
  assert "| final test top-1 | – |" in report
  assert "running marginal" not in report


def test_figures_name_the_run_and_axes_are_honest(tmp_path, monkeypatch):
  windows, marginals = study_windows()
  # A never-predicted class (frog) and near-identical class means (cosine 0.97-0.99).
  for conf, masked in windows:
    for m in (conf, masked):
      m[:, CAT] += m[:, 6]
      m[:, 6] = 0
  rng = np.random.default_rng(0)
  means = 5.0 + 0.3 * rng.normal(size=(10, 16))
  wd = write_workdir(tmp_path / "dp_run", new_format_records(windows, marginals),
                     "debiaspl", means=means)
  saved = {}
  real_save = analyze_report._save

  def save(fig, out_dir, name, written, runs):
    real_save(fig, out_dir, name, written, runs)
    saved[name] = fig
  monkeypatch.setattr(analyze_report, "_save", save)
  analyze.analyze([wd])
  assert sorted(saved) == sorted(PNGS)
  for name, fig in saved.items():
    assert fig.get_suptitle() == "debiaspl (dp_run)", name
  # (b): each row's number of unlabeled images in the windows (2 windows x 80).
  b = saved["b_confusion.png"].axes[0]
  rows = [t.get_text() for t in b.get_yticklabels()]
  assert rows[0] == "airplane (n=160)" and rows[CAT] == "cat (n=160)", rows
  # (c): a margin left of x = 0 so that frog (share 0) is visible.
  c = saved["c_precision_recall.png"].axes[0]
  assert c.get_xlim()[0] < 0
  # (d): bars from 0, the cosine axis never above 1; the scatter's x axis neither.
  _, bars, scatter = saved["d_similarity.png"].axes[:3]
  assert bars.get_ylim()[0] <= 0 and bars.get_ylim()[1] == 1.0
  assert scatter.get_xlim()[1] <= 1.0
  sim = analyze.cosine_similarity(means)
  assert sim[~np.eye(10, dtype=bool)].min() > 0.95  # the case that a truncated axis hid
  # Curves: the first window has no confident pseudo-labels, the others do, so both
  # series are drawn; top-1 has one series.
  curves = saved["curves.png"].axes
  assert [t.get_text() for t in curves[0].get_legend().get_texts()] == ["debiaspl (dp_run)"]


def test_curve_legends_list_only_drawn_series():
  from matplotlib.figure import Figure
  zero = np.zeros((3, 3), int)
  evals = [eval_record(s, [[4, 1, 0], [0, 5, 0], [0, 2, 3]], zero) for s in (10, 20)]
  run = analyze.Run("runs/x", {"method": "fixmatch"}, None, evals, evals, None,
                    ["0", "1", "2"])
  fig = Figure()
  axes = fig.subplots(1, 3)
  analyze.plot_curves([run], axes)
  for ax in axes[1:]:  # no confident pseudo-labels at all: no "confident" entry
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fixmatch (x), all"]
  # No top-1 values at all: nothing drawn, no legend.
  for r in evals:
    r["eval/top1"] = None
  fig = Figure()
  axes = fig.subplots(1, 3)
  analyze.plot_curves([run], axes)
  assert axes[0].get_legend() is None and not axes[0].get_lines()
  # A proportions panel without any confident pseudo-label: no class lines, no entries.
  fig = Figure()
  ax = fig.subplots()
  analyze.plot_proportions(evals, ax, analyze.MASKED)
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1/C"]


def test_long_tailed_unlabeled_data_are_judged_against_their_true_shares():
  """Unlabeled classes with 4000 ... 40 images (gamma = 100): pseudo-labels in exactly
  those proportions are unbiased (KL to the true shares 0) although far from uniform;
  uniform pseudo-labels are the biased ones there. The curves' KL panel and panel a
  switch to the true shares; a balanced run keeps KL to uniform."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  counts = np.array([int(4000 * 100 ** (-k / 9)) for k in range(10)])
  honest = np.diag(counts)
  flat = np.repeat(counts[:, None] / 10.0, 10, axis=1).round().astype(int)  # uniform labels
  s_honest = metrics_lib.pseudo_label_stats(honest)
  s_flat = metrics_lib.pseudo_label_stats(flat)
  assert s_honest["pseudo/kl_true"] < 0.01 < 0.5 < s_honest["pseudo/kl_uniform"]
  assert s_flat["pseudo/kl_true"] > 0.5 and s_flat["pseudo/kl_uniform"] < 0.01
  evals = [eval_record(100, honest), eval_record(200, honest)]
  assert analyze.skewed(evals)
  np.testing.assert_allclose(analyze.true_shares(evals), counts / counts.sum())
  assert not analyze.skewed([eval_record(100, biased_confusion(20))])
  for evs, title in ((evals, "true class shares"), ([eval_record(100, 80 * np.eye(10))] * 3,
                                                    "uniform")):
    run = analyze.Run(workdir="w", config={"method": "debiaspl"}, summary=None,
                      records=evs, evals=analyze.eval_records(evs), features=None,
                      class_names=[str(i) for i in range(10)])
    fig, axes = plt.subplots(1, 3)
    analyze.plot_curves([run], axes)
    assert title in axes[2].get_title()
    plt.close(fig)
  fig, ax = plt.subplots()
  analyze.plot_proportions(evals, ax)
  assert "true share\n(unlabeled set)" in [t.get_text() for t in ax.get_legend().get_texts()]
  plt.close(fig)


def _edit_metrics(wd, edit):
  """Rewrites metrics.jsonl with ``edit(record)`` applied to every eval record."""
  path = os.path.join(wd, "metrics.jsonl")
  records = [json.loads(line) for line in open(path, encoding="utf-8")]
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      if r.get("kind") == "eval":
        edit(r)
      f.write(json.dumps(r) + "\n")


def _binary(wd):
  with open(os.path.join(wd, "metrics.jsonl"), "wb") as f:
    f.write(bytes(range(128, 256)) * 4)


def _config(wd, text):
  with open(os.path.join(wd, "config.json"), "w", encoding="utf-8") as f:
    f.write(text)


def _no_num_classes(wd):
  _config(wd, json.dumps({"method": "fixmatch", "dataset": "cifar10"}))


@pytest.mark.parametrize("damage, match", [
    (_binary, r"metrics.jsonl, line 1: byte 0x80 is not UTF-8 text"),
    (lambda wd: _config(wd, "[1, 2, 3]"),
     r"config.json holds a JSON list, not an object"),
    (lambda wd: _config(wd, json.dumps({"num_classes": "ten"})),
     r"num_classes is 'ten', not a positive integer"),
    (lambda wd: _edit_metrics(wd, lambda r: r.update({"step": str(r["step"])})),
     r"a record of kind 'eval' has step '100'; steps are integers"),
    (lambda wd: _edit_metrics(
        wd, lambda r: r.update({"pseudo/confusion": [[1, 2], [3, 4]]})),
     r"step 100: pseudo/confusion is 2x2, but the run has 10 classes \(num_classes in "
     r"config.json\)"),
    (lambda wd: (_no_num_classes(wd), _edit_metrics(wd, lambda r: r.update(
        {"pseudo_masked/confusion": [[1, 2], [3, 4]]}))),
     r"pseudo_masked/confusion is 2x2, but the run has 10 classes \(the size of its "
     r"first confusion matrix, at step 100\)"),
    (lambda wd: _edit_metrics(wd, lambda r: r.update({"pseudo/confusion": [[1, 2, 3]]})),
     r"pseudo/confusion has shape \[1, 3\], not \[C, C\]"),
    (lambda wd: _edit_metrics(wd, lambda r: r["pseudo/confusion"][2].__setitem__(3, -5)),
     r"step 100: pseudo/confusion holds -5 at \[2, 3\]; counts are finite and >= 0"),
])
def test_bad_run_files_are_one_line(tmp_path, one_error_line, damage, match):
  """Run files that cannot be read or do not agree: one line, status 2, nothing written
  (not a traceback, and not a report with a "-5000000000000000.0%" share)."""
  wd = write_workdir(tmp_path / "run", cifar_records(), features=False)
  damage(wd)
  out = tmp_path / "out"
  assert analyze.main([wd, "--out", str(out)]) == 2
  assert re.search(match, one_error_line())
  assert not out.exists()


def test_unusable_out_is_one_line(tmp_path, one_error_line):
  wd = write_workdir(tmp_path / "run", cifar_records(), features=False)
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert analyze.main([wd, "--out", str(afile)]) == 2
  assert f"--out {afile} is a file, not a folder" in one_error_line()
  assert analyze.main([wd, "--out", str(afile / "sub")]) == 2
  assert f"{afile} is a file, not a folder" in one_error_line()
  if os.geteuid() != 0:  # root writes into a read-only folder all the same
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert analyze.main([wd, "--out", str(ro / "out")]) == 2
    assert "cannot write in" in one_error_line()
  # The default folder, inside a workdir where it cannot be made.
  (tmp_path / "run" / "analysis").write_text("x")
  assert analyze.main([wd]) == 2
  assert "the output folder" in one_error_line()
  with pytest.raises(SystemExit) as e:  # argparse's errors: one line, status 2 too
    analyze.main([wd, "--last-frac", "2"])
  assert e.value.code == 2 and "--last-frac must be in (0, 1]" in one_error_line()


@pytest.mark.parametrize("argv, match", [
    ([], "the following arguments are required: WORKDIR"),
    (["a", "b", "c"], "give one or two workdirs"),
])
def test_argument_errors_are_one_line_with_status_2(one_error_line, argv, match):
  with pytest.raises(SystemExit) as e:
    analyze.main(argv)
  assert e.value.code == 2
  line = one_error_line()
  assert match in line and "--help" in line
