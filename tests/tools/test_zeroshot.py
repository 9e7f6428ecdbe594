"""dlpl_jax.tools.zeroshot (``dlpl-zeroshot``): training-free debiasing of zero-shot
predictions, the bias statistics, and the command (every argument checked before
anything is computed or written; strict JSON). The readers and the split are tested in
tests/data/test_clip_labels.py."""

import json
import os

import numpy as np
import pytest

from dlpl_jax.data import clip_labels
from dlpl_jax.tools import zeroshot

C, PER_CLASS = 10, 200


def _synthetic(seed=0):
  """Balanced labels; logits = clean class evidence + log(prior), prior 100:1."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(C), PER_CLASS)
  prior = 100.0 ** (-np.arange(C) / (C - 1))
  prior /= prior.sum()
  evidence = 2.0 * np.eye(C)[labels] + rng.normal(size=(len(labels), C))
  return (evidence + np.log(prior)).astype(np.float32), labels, evidence


def _removes_prior(pred, labels, before, clean_top1):
  s = zeroshot.share_stats(pred, C, labels)
  return (s["kl_to_uniform"] < 0.1 and s["max_min_ratio"] is not None
          and s["max_min_ratio"] < 4 and s["top1"] > before["top1"] + 0.2
          and s["top1"] > clean_top1 - 0.05)


def test_debiasing_removes_a_known_prior():
  logits, labels, evidence = _synthetic()
  before = zeroshot.share_stats(logits.argmax(1), C, labels)
  clean_top1 = float((evidence.argmax(1) == labels).mean())
  assert before["kl_to_uniform"] > 0.5 and before["never_predicted"] >= 1
  d = zeroshot.debias_set(logits, tau=1.0)
  # The marginal is the set's mean softmax, skewed toward the head classes.
  np.testing.assert_allclose(d.marginal.sum(), 1.0, rtol=1e-5)
  assert np.all(np.diff(d.marginal[[0, 4, 9]]) < 0)
  assert _removes_prior(d.pseudo_labels, labels, before, clean_top1)
  # The same check fails with the sign flipped (logits + tau * log p̂) ...
  flipped = zeroshot.debias_set(logits, tau=1.0, marginal=1.0 / d.marginal)
  assert not _removes_prior(flipped.pseudo_labels, labels, before, clean_top1)
  # ... and without debiasing (tau = 0 is the zero-shot prediction itself).
  plain = zeroshot.debias_set(logits, tau=0.0)
  np.testing.assert_array_equal(plain.pseudo_labels, logits.argmax(1))
  assert not _removes_prior(plain.pseudo_labels, labels, before, clean_top1)


def test_set_marginal_is_mean_softmax_across_chunks(monkeypatch):
  logits, _, _ = _synthetic()
  monkeypatch.setattr(clip_labels, "_CHUNK", 333)  # uneven chunks
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(zeroshot.set_marginal(logits), p.mean(0), rtol=1e-5)


def test_share_stats_by_hand():
  s = zeroshot.share_stats(np.array([0, 0, 0, 1]), 3, np.array([0, 1, 2, 1]))
  assert s["share"] == [0.75, 0.25, 0.0]
  assert s["never_predicted"] == 1 and s["max_min_ratio"] is None
  assert s["top1"] == 0.5
  assert s["precision"] == [1 / 3, 1.0, None] and s["recall"] == [1.0, 0.5, 0.0]
  np.testing.assert_allclose(
      s["kl_to_uniform"], 0.75 * np.log(0.75 * 3) + 0.25 * np.log(0.25 * 3))
  np.testing.assert_allclose(  # true share 1/4, 1/2, 1/4
      s["kl_to_true_share"], 0.75 * np.log(3) + 0.25 * np.log(0.5))


def test_command(tmp_path, capsys):
  logits, labels, _ = _synthetic()
  npz = tmp_path / "preds.npz"
  np.savez(npz, logits=logits, labels=labels, image_ids=np.arange(len(labels)) + 100)
  out = tmp_path / "out"
  assert zeroshot.main(["--logits", str(npz), "--tau", "1.0,0.4", "--out", str(out),
                        "--split_threshold", "0.5"]) == 0
  printed = capsys.readouterr().out
  assert "zero-shot: top-1" in printed and "debiased τ=1: top-1" in printed
  summary = json.loads((out / "summary.json").read_text())
  assert summary["after"]["1"]["top1"] > summary["before"]["top1"] + 0.2
  assert summary["after"]["1"]["kl_to_uniform"] < summary["before"]["kl_to_uniform"]
  assert set(summary["after"]) == {"1", "0.4"}
  assert (out / "zeroshot_bias.png").stat().st_size > 10_000
  labeled = clip_labels.read_csv(str(out / "pseudo_labeled.csv"), C)
  unlabeled = clip_labels.read_csv(str(out / "unlabeled.csv"), C)
  assert len(labeled.index) + len(unlabeled.index) == len(labels)
  assert len(labeled.index) == summary["split"]["pseudo_labeled"]
  assert labeled.confidence.min() >= 0.5 > unlabeled.confidence.max()
  # Bad input: one line on stderr, status 2.
  assert zeroshot.main(["--logits", str(tmp_path / "absent.npz")]) == 2
  assert zeroshot.main(["--logits", str(npz), "--tau", "-1"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 2 and "cannot read" in err and "tau" in err


def test_command_checks_every_argument_before_computing(tmp_path, one_error_line):
  npz = tmp_path / "preds.npz"
  logits, labels, _ = _synthetic()
  np.savez(npz, logits=logits[:50], labels=labels[:50])
  for extra in ([], ["--out", str(tmp_path / "out")]):
    assert zeroshot.main(["--logits", str(npz), "--split_threshold", "1.5",
                          "--top_k_per_class", "-3"] + extra) == 2
    assert "split threshold must lie in [0, 1], got 1.5" in one_error_line()
    assert zeroshot.main(["--logits", str(npz), "--top_k_per_class", "0"] + extra) == 2
    assert "top_k_per_class must be an integer >= 1" in one_error_line()
  assert not (tmp_path / "out").exists()  # nothing was created
  # A bad input file with --out: refused, no empty output folder left behind.
  (tmp_path / "junk.npz").write_bytes(b"junk")
  assert zeroshot.main(["--logits", str(tmp_path / "junk.npz"), "--out",
                        str(tmp_path / "out")]) == 2
  assert "not a valid .npz of arrays" in one_error_line()
  assert not (tmp_path / "out").exists()
  # argparse's errors: one line too, status 2.
  with pytest.raises(SystemExit) as e:
    zeroshot.main(["--logits", str(npz), "--top_k_per_class", "many"])
  assert e.value.code == 2 and "--top_k_per_class" in one_error_line()


def test_command_refuses_unusable_out(tmp_path, one_error_line):
  npz = tmp_path / "preds.npz"
  np.savez(npz, logits=np.zeros((4, 3), np.float32))
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert zeroshot.main(["--logits", str(npz), "--out", str(afile)]) == 2
  assert f"--out {afile} is a file, not a folder" in one_error_line()
  assert zeroshot.main(["--logits", str(npz), "--out", str(afile / "sub")]) == 2
  assert f"{afile} is a file, not a folder" in one_error_line()
  if os.geteuid() != 0:  # root writes into a read-only folder all the same
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert zeroshot.main(["--logits", str(npz), "--out", str(ro / "out")]) == 2
    assert "cannot write in" in one_error_line()


def test_summary_is_strict_json(tmp_path):
  """A class predicted but absent from the labels: KL to the true share is undefined
  (inf in memory), null in summary.json, never the non-JSON ``Infinity``."""
  logits = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0, 0]],
                    np.float32)
  npz = tmp_path / "p.npz"
  np.savez(npz, logits=logits, labels=np.array([0, 1, 1, 0]))
  summary = zeroshot.run(str(npz), (0.0,), str(tmp_path / "out"), log=lambda _: None)
  assert summary["before"]["kl_to_true_share"] == float("inf")
  text = (tmp_path / "out" / "summary.json").read_text()
  assert "Infinity" not in text and "NaN" not in text

  def refuse(name):
    raise ValueError(name)
  stored = json.loads(text, parse_constant=refuse)
  assert stored["before"]["kl_to_true_share"] is None


@pytest.mark.parametrize("argv, match", [
    ([], "the following arguments are required: --logits"),
    (["--logits", "x.npz", "--tau"], "expected one argument"),
])
def test_argument_errors_are_one_line_with_status_2(one_error_line, argv, match):
  with pytest.raises(SystemExit) as e:
    zeroshot.main(argv)
  assert e.value.code == 2
  line = one_error_line()
  assert match in line and "--help" in line
