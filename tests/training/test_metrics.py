"""Pseudo-label statistics and the metric writers (dlpl_jax/training/metrics.py): strict
JSON lines (undefined values are null), TensorBoard rebuilt from them, a resume's
roll-back. (What the loop writes, end to end: tests/training/test_loop.py.)"""

import json
import math
import os

import numpy as np
import pytest

from dlpl_jax.training import metrics as metrics_lib

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"]


def strict_records(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line, parse_constant=lambda x: pytest.fail(f"bare {x} in JSON"))
            for line in f]


# --- statistics -------------------------------------------------------------------------


class TestPseudoLabelStats:

  def test_against_hand_computed_values(self):
    confusion = np.array([[3, 1, 0], [0, 2, 0], [1, 1, 0]])
    s = metrics_lib.pseudo_label_stats(confusion, "pl")
    assert s["pl/counts"] == [4, 4, 0]
    assert s["pl/acc"] == pytest.approx(5 / 8)
    assert s["pl/imbalance"] == 4.0  # an absent class counts as 1: finite
    p = np.array([0.5, 0.5])
    assert s["pl/kl_uniform"] == pytest.approx(float(np.sum(p * np.log(p * 3))))
    q = (np.array([4, 2, 2]) + 0.5) / (8 + 1.5)
    assert s["pl/kl_true"] == pytest.approx(float(np.sum(p * np.log(p / q[:2]))))

  def test_no_pseudo_labels_are_undefined_not_zero(self):
    s = metrics_lib.pseudo_label_stats(np.zeros((3, 3)), "pseudo_masked")
    assert s == {"pseudo_masked/counts": [0, 0, 0], "pseudo_masked/imbalance": None,
                 "pseudo_masked/kl_uniform": None, "pseudo_masked/kl_true": None,
                 "pseudo_masked/acc": None}

  def test_a_matrix_that_is_not_square_is_refused(self):
    with pytest.raises(ValueError, match=r"confusion must be \[C, C\]"):
      metrics_lib.pseudo_label_stats(np.zeros((2, 3)))

  def test_precision_and_recall(self):
    precision, recall = metrics_lib.per_class_precision_recall([[3, 1], [0, 0]])
    np.testing.assert_allclose(precision, [1.0, 0.0])
    assert recall[0] == 0.75 and math.isnan(recall[1])

  def test_to_json_and_markdown(self):
    assert metrics_lib.to_json({"a": np.float32(1.5), "b": np.array([np.nan, 2.0]),
                                "c": (float("-inf"), 3), "d": "x"}) == {
                                    "a": 1.5, "b": [None, 2.0], "c": [None, 3], "d": "x"}
    table = metrics_lib.confusion_markdown(np.array([[1, 2], [0, 3]]), ["a", "b"])
    assert table.splitlines()[2:] == ["| a | 1 | 2 | 3 |", "| b | 0 | 3 | 3 |"]


# --- the writer -------------------------------------------------------------------------


class TestMetricWriter:

  def test_strict_json_lines_and_tensorboard_tags(self, tmp_path, tensorboard_tags):
    w = metrics_lib.MetricWriter(str(tmp_path), class_names=NAMES)
    w.write(1, "train", {"train/loss": np.float32(1.5), "pseudo_masked/acc": None,
                         "train/lr": float("nan"), "marginal": np.full(10, 0.1)})
    w.write(2, "eval", {"eval/top1": 12.5, "eval/per_class": [np.nan] + [50.0] * 9,
                        "pseudo/confusion": np.eye(10, dtype=int).tolist()})
    w.close()
    train, ev = strict_records(tmp_path / "metrics.jsonl")
    assert train == {"step": 1, "kind": "train", "train/loss": 1.5,
                     "pseudo_masked/acc": None, "train/lr": None, "marginal": [0.1] * 10}
    assert ev["eval/per_class"][0] is None and ev["eval/per_class"][1] == 50.0
    tags = tensorboard_tags(tmp_path / "tensorboard")
    assert tags["train/loss"] == [1] and tags["eval/top1"] == [2]
    assert "train/lr" not in tags and "pseudo_masked/acc" not in tags  # undefined: skipped
    assert tags["marginal/airplane"] == [1] and tags["marginal/truck"] == [1]
    assert "eval/per_class/airplane" not in tags and tags["eval/per_class/truck"] == [2]
    assert tags["pseudo/confusion"] == [2]  # as a text table

  def test_rebuild_replaces_the_events_with_the_kept_records(self, tmp_path, tensorboard_tags):
    w = metrics_lib.MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
      w.write(step, "train", {"train/loss": float(step), "v": [1.0, 2.0]})
    w.close()
    kept = metrics_lib.rollback_jsonl(str(tmp_path / "metrics.jsonl"), 2)
    w = metrics_lib.MetricWriter(str(tmp_path))
    w.rebuild(kept)
    w.write(3, "train", {"train/loss": 30.0})
    w.close()
    tags = tensorboard_tags(tmp_path / "tensorboard")  # no (tag, step) twice
    assert tags["train/loss"] == [1, 2, 3] and tags["v/0"] == [1, 2]
    assert [r["step"] for r in strict_records(tmp_path / "metrics.jsonl")] == [1, 2, 3]

  def test_a_disabled_writer_writes_nothing(self, tmp_path):
    w = metrics_lib.MetricWriter(str(tmp_path), enabled=False)
    w.write(1, "train", {"train/loss": 1.0})
    w.rebuild([{"step": 1, "kind": "train"}])
    w.close()
    assert os.listdir(tmp_path) == []

  def test_without_tensorboard_only_json_lines(self, tmp_path):
    w = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
    w.write(1, "train", {"train/loss": 1.0})
    w.close()
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


# --- reading and rolling back -----------------------------------------------------------


class TestJsonLines:

  def test_read_skips_a_torn_line_and_damage(self, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "kind": "train"}\n\xff\xfe not json\n[1, 2]\n'
                     b'{"step": 2, "kind": "eval"}\n{"step": 3, "ki')
    damaged = []
    got = metrics_lib.read_jsonl(str(path), damaged)
    assert [(r["step"], r["kind"]) for r in got] == [(1, "train"), (2, "eval")]
    assert damaged == [2, 3]  # complete lines only: the torn end is not damage

  def test_rollback_keeps_each_step_and_kind_once_up_to_the_step(self, tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "kind": "train", "x": 1}, {"step": 2, "kind": "train", "x": 2},
            {"step": 2, "kind": "eval"}, {"step": 2, "kind": "train", "x": 99},
            {"step": 3, "kind": "train"}, {"step": "4", "kind": "train"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "garbage\n" + '{"st')
    logs = []
    kept = metrics_lib.rollback_jsonl(str(path), 2, log=logs.append)
    assert kept == rows[:3]
    assert strict_records(path) == rows[:3]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    assert len(logs) == 1 and "dropped 1 unreadable line(s) (first: line 7)" in logs[0]
    assert metrics_lib.rollback_jsonl(str(tmp_path / "none.jsonl"), 2) == []
