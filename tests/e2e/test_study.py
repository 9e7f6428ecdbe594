"""The study runner end to end at a tiny size (eight short runs on the real CIFAR-10):
resumable runs, the tables and the plots of the imbalanced study."""

import json

import pytest

from experiments import run_study
from experiments import study_imbalanced


def test_imbalanced_study_tables_and_plots(tmp_path, cifar_dir, monkeypatch):
  del cifar_dir  # only makes the test skip without the data
  full = study_imbalanced.get_config

  def tiny(variant):
    c = full(variant)
    c.total_steps, c.eval_every, c.log_every, c.checkpoint_every = 4, 2, 2, 2
    c.eval_examples, c.eval_batch_size, c.progress = 1000, 500, False
    return c

  monkeypatch.setattr(study_imbalanced, "get_config", tiny)
  run_study.imbalanced(str(tmp_path / "runs"), str(tmp_path / "out"))
  rows = json.load(open(tmp_path / "out" / "study_imbalanced.json"))
  assert [(r["setting"], r["method"], r["seed"]) for r in rows] == [
      (s, m, seed) for s in ("lt", "mismatch") for seed in (0, 1)
      for m in ("fixmatch", "debiaspl")]
  for r in rows:
    assert r["steps"] == 4
    assert abs(sum(r["true_share"]) - 1) < 1e-9 and abs(sum(r["pl_share"]) - 1) < 1e-9
  lt = [r for r in rows if r["setting"] == "lt"][0]["true_share"]
  mm = [r for r in rows if r["setting"] == "mismatch"][0]["true_share"]
  # 64 unlabeled images in the window: long-tailed (class 0 about 40%) vs balanced.
  assert max(mm) < 0.3 < lt[0]
  md = (tmp_path / "out" / "study_imbalanced.md").read_text()
  assert md.count("| lt |") == 4 and md.count("| mismatch |") == 4
  for setting in ("lt", "mismatch"):
    assert (tmp_path / "out" / "study_imbalanced" / setting / "a_proportions.png").exists()
  # Re-running finds every run finished and trains nothing (run_study.trainer is
  # dlpl_jax.training.loop).
  monkeypatch.setattr(run_study.trainer, "train_and_evaluate",
                      lambda *a, **k: pytest.fail("a finished run was trained again"))
  run_study.imbalanced(str(tmp_path / "runs"), str(tmp_path / "out"))
