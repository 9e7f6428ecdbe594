"""dlpl_jax.data.clip_labels: the zero-shot pseudo-label files (the official CSV, an .npz
of logits), every bad input refused in one line, and the split by confidence."""

import io

import numpy as np
import pytest

from dlpl_jax.data import clip_labels
from dlpl_jax.errors import UsageError


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


def test_read_csv_encodings(tmp_path):
  """A UTF-8 byte-order mark is read; a byte that is not UTF-8 is one line."""
  bom = tmp_path / "bom.csv"
  bom.write_bytes("\ufeffIndex,PseudoLabel,Probs\n4,1,0.9\n".encode("utf-8"))
  np.testing.assert_array_equal(clip_labels.read_csv(str(bom), 5).index, [4])
  latin = tmp_path / "latin.csv"
  latin.write_bytes(b"Index,PseudoLabel,Probs,Name\n4,1,0.9,caf\xe9\n")
  with pytest.raises(UsageError, match=r"latin.csv is not UTF-8 text \(byte 0xe9"):
    clip_labels.read_csv(str(latin))


def test_read_npz(tmp_path):
  logits = np.array([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]], np.float32)
  path = tmp_path / "preds.npz"
  np.savez(path, logits=logits, labels=np.array([1, 2]), image_ids=np.array([10, 11]))
  zs = clip_labels.read_npz(str(path))
  np.testing.assert_array_equal(zs.index, [0, 1])
  np.testing.assert_array_equal(zs.pseudo_labels, [1, 0])
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(zs.confidence, p.max(1), rtol=1e-6)
  np.testing.assert_array_equal(zs.labels, [1, 2])
  np.testing.assert_array_equal(zs.image_ids, [10, 11])
  np.testing.assert_array_equal(zs.logits, logits)


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


def _save_npy(path, array):
  with open(path, "wb") as f:
    np.save(f, array)


def _npz_bytes():
  buf = io.BytesIO()
  np.savez(buf, logits=np.zeros((100, 10), np.float32))
  return buf.getvalue()


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
