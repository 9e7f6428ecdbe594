"""dlpl_jax.analyze on fake workdirs: hand-computed proportions and report numbers, one
and two runs, and a running job's leftovers (torn line, one eval, no class features)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dlpl_jax import analyze
from dlpl_jax import metrics as metrics_lib

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
                  total_steps=800, torn=False):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    if torn:
      f.write('{"step": 999, "kind": "eval", "pseudo/conf')
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"method": method, "dataset": "cifar10" if num_classes == 10 else "toy",
               "num_classes": num_classes, "total_steps": total_steps}, f)
  if features:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(num_classes, 16)) + 1.0
    if num_classes == 10:  # cat close to every class, above all bird, deer and dog
      means[CAT] = means.mean(axis=0) + 0.5 * means[[DOG, DEER, BIRD]].mean(axis=0)
    np.savez(os.path.join(path, "class_features.npz"), step=records[-1]["step"],
             class_means=means, per_class_acc=np.full(num_classes, 50.0))
  return str(path)


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
  # Only train records so far, compared with a run that has evals.
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with open(os.path.join(empty, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write(json.dumps({"step": 3, "kind": "train", "train/loss": 2.0}) + "\n{\"st")
  paths = analyze.analyze([empty, one])
  assert len(paths) == len(PNGS) + 1
  assert "no eval records yet" in open(paths[-1], encoding="utf-8").read()
  # A half-written class_features.npz reads as missing.
  with open(os.path.join(one, "class_features.npz"), "wb") as f:
    f.write(b"PK\x03\x04 torn")
  assert analyze.load_run(one).features is None
  # A missing workdir is an error message, not a traceback.
  assert analyze.main([str(tmp_path / "nope")]) == 2


def test_import_without_tensorflow():
  code = ("import sys; sys.modules['tensorflow'] = None; import dlpl_jax.analyze; "
          "assert 'matplotlib.pyplot' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
