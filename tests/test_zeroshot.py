"""Tests of dlpl_jax.zeroshot: readers, the confidence split, training-free debiasing."""

import json
import os

import numpy as np
import pytest

from dlpl_jax.data import clip_labels
from dlpl_jax.tools import zeroshot
from dlpl_jax.errors import UsageError
from tests import helpers

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


def test_read_csv(tmp_path):
  path = tmp_path / "CLIPPseudoLabel0.95.csv"
  path.write_text(",Index,PseudoLabel,Probs\n0,12,3,0.97\n1,5,0,0.991\n2,7,3,0.5\n")
  zs = clip_labels.read_csv(str(path), num_classes=5)
  np.testing.assert_array_equal(zs.index, [12, 5, 7])
  np.testing.assert_array_equal(zs.pseudo_labels, [3, 0, 3])
  np.testing.assert_allclose(zs.confidence, [0.97, 0.991, 0.5])
  assert zs.logits is None and zs.labels is None
  split = clip_labels.split_by_confidence(zs.pseudo_labels, zs.confidence)
  np.testing.assert_array_equal(zs.index[split.labeled], [12, 5])
  # write_csv writes what read_csv reads.
  back = tmp_path / "back.csv"
  clip_labels.write_csv(str(back), zs.index, zs.pseudo_labels, zs.confidence)
  again = clip_labels.read_csv(str(back))
  np.testing.assert_array_equal(again.index, zs.index)
  np.testing.assert_allclose(again.confidence, zs.confidence, rtol=1e-6)


@pytest.mark.parametrize("text, match", [
    ("Index,Label,Probs\n0,1,0.9\n", "no column 'PseudoLabel'"),
    ("Index,PseudoLabel,Probs\n0,7,0.9\n", r"line 2: PseudoLabel 7 is outside \[0, 5\)"),
    ("Index,PseudoLabel,Probs\n0,-1,0.9\n", "PseudoLabel -1"),
    ("Index,PseudoLabel,Probs\n0,1,nan\n", "Probs nan"),
    ("Index,PseudoLabel,Probs\n0,1,1.5\n", "Probs 1.5"),
    ("Index,PseudoLabel,Probs\n0,1.5,0.9\n", "column PseudoLabel: '1.5' is not an integer"),
    ("Index,PseudoLabel,Probs\n3,1,0.9\n3,2,0.8\n",
     r"Index 3 appears 2 times \(lines 2 and 3\)"),
    # Every message names the file's line (header = line 1), blank lines counted.
    ("Index,PseudoLabel,Probs\n\n0,1,0.9\n5,9,0.9\n",
     r"line 4: PseudoLabel 9 is outside"),
    ("Index,PseudoLabel,Probs\n0,1,0.9\n1,2,1.5\n", r"line 3: Probs 1.5 is not a prob"),
    ("Index,PseudoLabel,Probs\n0,1\n", r"line 2: 2 fields, the header \(line 1\) 3"),
    ("Index,PseudoLabel,Probs\n0,1,abc\n", "line 2, column Probs: 'abc' is not a number"),
    ("Index,PseudoLabel,Probs\n1e30,1,0.9\n",
     "line 2, column Index: '1e30' is beyond the int64 range"),
    ("Index,PseudoLabel,Probs\n", "no rows"),
    ("", "is empty"),
])
def test_read_csv_refuses_bad_input(tmp_path, text, match):
  path = tmp_path / "bad.csv"
  path.write_text(text)
  with pytest.raises(UsageError, match=match) as e:
    clip_labels.read_csv(str(path), num_classes=5)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("arrays, match", [
    ({"scores": np.zeros((2, 3), np.float32)}, "no 'logits' array"),
    ({"logits": np.zeros(3, np.float32)}, r"logits must be \[N >= 1, C >= 2\]"),
    ({"logits": np.array([[0, 1], [np.nan, 0]], np.float32)}, "logits of row 1"),
    ({"logits": np.zeros((2, 3), np.float32), "labels": np.array([0, 3])},
     r"label 3 \(row 1\) is outside \[0, 3\)"),
    ({"logits": np.zeros((2, 3), np.float32), "labels": np.array([0.0, 1.0])},
     "labels must be"),
    ({"logits": np.zeros((2, 3), np.int64)}, "floating point"),
])
def test_read_npz_refuses_bad_input(tmp_path, arrays, match):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(UsageError, match=match):
    clip_labels.read_npz(str(path))


def test_split_top_k_per_class():
  pred = np.array([0, 0, 0, 1, 1, 2])
  conf = np.array([0.5, 0.9, 0.7, 0.99, 0.2, 0.96])
  s = clip_labels.split_by_confidence(pred, conf, threshold=None, top_k_per_class=2)
  np.testing.assert_array_equal(s.labeled, [1, 2, 3, 4, 5])
  s = clip_labels.split_by_confidence(pred, conf, threshold=0.95, top_k_per_class=2)
  np.testing.assert_array_equal(s.labeled, [3, 5])
  np.testing.assert_array_equal(s.unlabeled, [0, 1, 2, 4])
  with pytest.raises(UsageError, match="threshold must lie"):
    clip_labels.split_by_confidence(pred, conf, threshold=1.5)


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


def test_read_csv_encodings(tmp_path):
  """A UTF-8 byte-order mark is read; a byte that is not UTF-8 is one line."""
  bom = tmp_path / "bom.csv"
  bom.write_bytes("\ufeffIndex,PseudoLabel,Probs\n4,1,0.9\n".encode("utf-8"))
  np.testing.assert_array_equal(clip_labels.read_csv(str(bom), 5).index, [4])
  latin = tmp_path / "latin.csv"
  latin.write_bytes(b"Index,PseudoLabel,Probs,Name\n4,1,0.9,caf\xe9\n")
  with pytest.raises(UsageError, match=r"latin.csv is not UTF-8 text \(byte 0xe9"):
    clip_labels.read_csv(str(latin))


def _save_npy(path, array):
  with open(path, "wb") as f:
    np.save(f, array)


@pytest.mark.parametrize("make, match", [
    # Not an archive at all: not numpy's hint to allow pickle.
    (lambda p: p.write_bytes(b"garbage, not an archive" * 10),
     r"is not a valid \.npz of arrays \(not a zip archive"),
    (lambda p: p.write_bytes(_npz_bytes()[:200]), r"is not a valid \.npz of arrays"),
    (lambda p: _save_npy(p, np.zeros((4, 3), np.float32)), r"a single \.npy array"),
    (lambda p: np.savez(p, logits=np.array([[0.0, 1.0], [1e39, 0.0]])),
     r"logits of row 1 hold values beyond float32's range"),
])
def test_read_npz_refuses_bad_files(tmp_path, make, match):
  path = tmp_path / "bad.npz"
  make(path)
  with pytest.raises(UsageError, match=match) as e:
    clip_labels.read_npz(str(path))
  assert "allow_pickle" not in str(e.value) and "\n" not in str(e.value)


def _npz_bytes():
  import io  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  np.savez(buf, logits=np.zeros((100, 10), np.float32))
  return buf.getvalue()




def test_command_checks_every_argument_before_computing(tmp_path, capsys):
  npz = tmp_path / "preds.npz"
  logits, labels, _ = _synthetic()
  np.savez(npz, logits=logits[:50], labels=labels[:50])
  for extra in ([], ["--out", str(tmp_path / "out")]):
    assert zeroshot.main(["--logits", str(npz), "--split_threshold", "1.5",
                          "--top_k_per_class", "-3"] + extra) == 2
    assert "split threshold must lie in [0, 1], got 1.5" in helpers.one_error_line(capsys)
    assert zeroshot.main(["--logits", str(npz), "--top_k_per_class", "0"] + extra) == 2
    assert "top_k_per_class must be an integer >= 1" in helpers.one_error_line(capsys)
  assert not (tmp_path / "out").exists()  # nothing was created
  # A bad input file with --out: refused, no empty output folder left behind.
  (tmp_path / "junk.npz").write_bytes(b"junk")
  assert zeroshot.main(["--logits", str(tmp_path / "junk.npz"), "--out",
                        str(tmp_path / "out")]) == 2
  assert "not a valid .npz of arrays" in helpers.one_error_line(capsys)
  assert not (tmp_path / "out").exists()
  # argparse's errors: one line too, status 2.
  with pytest.raises(SystemExit) as e:
    zeroshot.main(["--logits", str(npz), "--top_k_per_class", "many"])
  assert e.value.code == 2 and "--top_k_per_class" in helpers.one_error_line(capsys)


def test_command_refuses_unusable_out(tmp_path, capsys):
  npz = tmp_path / "preds.npz"
  np.savez(npz, logits=np.zeros((4, 3), np.float32))
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert zeroshot.main(["--logits", str(npz), "--out", str(afile)]) == 2
  assert f"--out {afile} is a file, not a folder" in helpers.one_error_line(capsys)
  assert zeroshot.main(["--logits", str(npz), "--out", str(afile / "sub")]) == 2
  assert f"{afile} is a file, not a folder" in helpers.one_error_line(capsys)
  if os.geteuid() != 0:  # root writes into a read-only folder all the same
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert zeroshot.main(["--logits", str(npz), "--out", str(ro / "out")]) == 2
    assert "cannot write in" in helpers.one_error_line(capsys)


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
