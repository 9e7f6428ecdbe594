"""The loop's small pieces (dlpl_jax/training/periodic.py), each on its own: the metric
window, the train and eval records, progress lines, the non-finite guard, checkpoints
from the loop, the stop, the summary. (Together in the loop:
tests/training/test_loop.py.)"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax.errors import RunError
from dlpl_jax.training import checkpoint as checkpoint_lib
from dlpl_jax.training import interrupt
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import periodic
from dlpl_jax.training import workdir as workdir_lib


class _State:
  """What the records read of a train state."""

  def __init__(self, marginal, confusion, confusion_masked):
    self.marginal = jnp.asarray(marginal, jnp.float32)
    self.confusion = jnp.asarray(confusion, jnp.float32)
    self.confusion_masked = jnp.asarray(confusion_masked, jnp.float32)

  def replace(self, **kw):
    new = _State(self.marginal, self.confusion, self.confusion_masked)
    for k, v in kw.items():
      setattr(new, k, v)
    return new


# --- the metric window ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 4, 7, 128, 130])
def test_a_window_of_metrics_is_fetched_whole_and_in_order(n):
  rng = np.random.default_rng(n)
  loss = rng.normal(size=n).astype(np.float32)
  window = periodic.MetricWindow()
  for i, x in enumerate(loss):
    window.add(10 + i, {"train/loss": jnp.float32(x), "count": jnp.int32(i)})
  steps, got, rate = window.fetch()
  assert steps == list(range(10, 10 + n)) and rate > 0
  np.testing.assert_array_equal(got["train/loss"], loss)
  np.testing.assert_array_equal(got["count"], np.arange(n))
  assert got["count"].dtype == np.int32
  assert window.pending == []  # the window restarts


# --- records and lines ------------------------------------------------------------------


def test_train_record_means_and_single_names():
  state = _State([0.5, 0.25, 0.25], [[2, 1, 0], [0, 1, 0], [0, 0, 0]], np.zeros((3, 3)))
  values = {"train/loss": np.array([1.0, 3.0]), "train/mask_rate": np.array([0.0, 0.0])}
  record = periodic.train_record(values, 4.0, state, 0.03)
  assert record["train/loss"] == 2.0 and record["train/mask_rate"] == 0.0
  assert record["train/steps_per_sec"] == 4.0 and record["train/lr"] == 0.03
  assert record["marginal"] == [0.5, 0.25, 0.25]
  assert record["pseudo/counts"] == [2, 2, 0] and record["pseudo/acc"] == 0.75
  # Nothing confident: the masked statistics are undefined (null), not 0.
  assert record["pseudo_masked/acc"] is None and record["pseudo_masked/imbalance"] is None
  assert "pseudo/acc_all" not in record and "pseudo/acc_masked" not in record
  json.dumps(record, allow_nan=False)


def test_eval_record_holds_the_window_confusions_only():
  state = _State([0.5, 0.5], [[1, 2], [3, 4]], [[1, 0], [0, 4]])
  ev = {"eval/top1": 50.0, "eval/per_class": [100.0, 0.0], "eval/predicted": [2, 0],
        "class_features": np.zeros((2, 4))}
  record = periodic.eval_record(ev, state)
  assert record == {"eval/top1": 50.0, "eval/per_class": [100.0, 0.0],
                    "eval/predicted": [2, 0], "pseudo/confusion": [[1, 2], [3, 4]],
                    "pseudo_masked/confusion": [[1, 0], [0, 4]]}


def test_progress_and_eval_lines():
  record = {"train/steps_per_sec": 2.0, "train/loss": 1.23456, "train/mask_rate": 0.5,
            "pseudo/acc": None}
  assert periodic.progress_line(20, 120, record) == (
      "step 20/120 (17%), 2.00 steps/s, ETA 50 s: loss 1.235, mask rate 0.50, "
      "pseudo-label acc -")
  assert "ETA 1.4 h" in periodic.progress_line(0, 10000, record)
  assert "ETA ?" in periodic.progress_line(1, 2, {**record, "train/steps_per_sec": 0.0})
  line = periodic.eval_line(4, {"eval/top1": 12.5}, {"pseudo/acc": 0.5,
                                                     "pseudo/imbalance": None,
                                                     "train/mask_rate": 0.25}, "student")
  assert line == ("step 4: student test top-1 12.50%; since the last evaluation: "
                  "pseudo-label acc 0.500, imbalance -, mask rate 0.25")


def test_progress_without_a_terminal_prints_lines(capsys):
  progress = periodic.Progress(total=4, initial=0, enabled=True)
  assert progress.bar is None  # stderr is not a terminal here
  progress.tick()
  progress.report(4, {"train/steps_per_sec": 1.0, "train/loss": 1.0, "train/mask_rate": 0.0})
  progress.say("hello")
  progress.close()
  err = capsys.readouterr().err.splitlines()
  assert err[0].startswith("[dlpl_jax] step 4/4 (100%)") and err[1] == "[dlpl_jax] hello"
  quiet = periodic.Progress(total=4, initial=0, enabled=False)
  quiet.report(4, {"train/loss": 1.0, "train/mask_rate": 0.0})
  assert capsys.readouterr().err == ""


def test_evaluation_writes_the_record_and_the_feature_files(tmp_path):
  state = _State([0.5, 0.5], np.ones((2, 2)), np.zeros((2, 2)))
  features = np.arange(6, dtype=np.float32).reshape(2, 3)
  written = []

  class Writer:
    def write(self, step, kind, record):
      written.append((step, kind, record))
  ev = {"eval/top1": 50.0, "eval/per_class": [100.0, float("nan")],
        "eval/predicted": [2, 0], "class_features": features}
  record = periodic.evaluation(6, state, lambda s: ev, Writer(), str(tmp_path))
  assert written == [(6, "eval", record)] and "class_features" not in record
  for path in (tmp_path / "class_features.npz",
               tmp_path / "features" / "class_features_6.npz"):
    with np.load(path) as f:
      assert int(f["step"]) == 6
      np.testing.assert_array_equal(f["class_means"], features)
      np.testing.assert_array_equal(f["per_class_acc"], [100.0, np.nan])


def test_reset_counters_zeroes_the_confusions():
  mesh = mesh_lib.make_mesh()
  state = _State([0.5, 0.5], np.ones((2, 2)), np.ones((2, 2)))
  new = periodic.reset_counters(state, mesh)
  np.testing.assert_array_equal(new.confusion, np.zeros((2, 2)))
  np.testing.assert_array_equal(new.confusion_masked, np.zeros((2, 2)))
  assert new.confusion.sharding.is_fully_replicated


# --- the non-finite guard and the loop's checkpoints ------------------------------------


def _state(x=1.0):
  return {"w": jnp.full((3,), x, jnp.float32)}


class TestNonFiniteGuard:

  def test_a_finite_window_passes(self, tmp_path):
    ck = checkpoint_lib.Checkpointer(str(tmp_path), every=1, keep=2)
    guard = periodic.NonFiniteGuard(str(tmp_path), ck, None, {"lr": 0.1})
    guard.check([1, 2], {"train/loss": np.array([1.0, 2.0]),
                         "train/param_norm": np.array([3.0, 4.0])})
    assert not (tmp_path / workdir_lib.NONFINITE_FILE).exists()

  def test_stop_names_the_step_and_the_values_and_remembers_it(self, tmp_path):
    ck = checkpoint_lib.Checkpointer(str(tmp_path), every=1, keep=2)
    guard = periodic.NonFiniteGuard(str(tmp_path), ck, None, {"lr": 0.1})
    with pytest.raises(periodic.NonFiniteLossError,
                       match=r"^non-finite train/loss and train/param_norm \(nan, inf\) at "
                             r"step 5; stopped without saving. Last good checkpoint: none. "
                             r"No checkpoint was written yet") as e:
      guard.check([4, 5], {"train/loss": np.array([1.0, np.nan]),
                           "train/param_norm": np.array([1.0, np.inf])})
    assert isinstance(e.value, RunError) and "\n" not in str(e.value)
    marker = json.loads((tmp_path / workdir_lib.NONFINITE_FILE).read_text())
    assert marker == {"step": 5, "resumed_from": None, "config": {"lr": 0.1}}

  def test_advice_names_the_kept_checkpoints_and_warns_on_a_repeat(self, tmp_path, capsys):
    ck = checkpoint_lib.Checkpointer(str(tmp_path), every=1, keep=3)
    for step in (2, 4):
      ck.save(step, _state(), force=True)
    guard = periodic.NonFiniteGuard(str(tmp_path), ck, 4, {"lr": 0.1})
    with pytest.raises(periodic.NonFiniteLossError,
                       match=rf"at step 5; .* Last good checkpoint: step 4 in "
                             rf"{ck.directory}. .*--restore_step=K \(kept: \[2, 4\]\)"):
      guard.stop(5, "non-finite train/loss (nan)")
    capsys.readouterr()
    again = periodic.NonFiniteGuard(str(tmp_path), ck, 4, {"lr": 0.1})
    again.warn_if_repeating()
    err = capsys.readouterr().err
    assert ("warning: the last run from this checkpoint with this config stopped on "
            "non-finite values at step 5 and will again") in err
    periodic.NonFiniteGuard(str(tmp_path), ck, 2, {"lr": 0.1}).warn_if_repeating()
    periodic.NonFiniteGuard(str(tmp_path), ck, 4, {"lr": 0.01}).warn_if_repeating()
    assert capsys.readouterr().err == ""  # another checkpoint, another config
    again.saved(5)  # not past the stop: kept
    assert (tmp_path / workdir_lib.NONFINITE_FILE).exists()
    again.saved(6)  # a good checkpoint past the stop clears it
    assert not (tmp_path / workdir_lib.NONFINITE_FILE).exists()
    ck.close()

  def test_save_checkpoint_of_a_non_finite_state_stops_the_run(self, tmp_path):
    ck = checkpoint_lib.Checkpointer(str(tmp_path), every=1, keep=2)
    guard = periodic.NonFiniteGuard(str(tmp_path), ck, None, {})
    periodic.save_checkpoint(ck, 2, _state(), guard)
    with pytest.raises(periodic.NonFiniteLossError,
                       match=r"^refusing to save checkpoint step 4 .*: non-finite values in "
                             r"w; .* at step 4; stopped without saving. Last good "
                             r"checkpoint: step 2"):
      periodic.save_checkpoint(ck, 4, _state(np.nan), guard)
    assert ck.all_steps() == [2]

  def test_save_checkpoint_that_cannot_be_written_is_a_run_error(self, tmp_path):
    ck = checkpoint_lib.Checkpointer(str(tmp_path), every=1, keep=2)
    guard = periodic.NonFiniteGuard(str(tmp_path), ck, None, {})
    periodic.save_checkpoint(ck, 2, _state(), guard)
    ck.close()
    ck = checkpoint_lib.Checkpointer(str(tmp_path), every=1, keep=2)
    os.rename(ck.directory, str(tmp_path / "moved"))
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(RunError, match=r"^cannot write checkpoint step 4 to .*; training "
                                       r"stopped. Last complete checkpoint: step 2") as e:
      periodic.save_checkpoint(ck, 4, _state(), guard)
    assert not isinstance(e.value, periodic.NonFiniteLossError)


# --- the stop ---------------------------------------------------------------------------


def test_stopper_stop_at_and_signal():
  mesh = mesh_lib.make_mesh()
  signal = interrupt.StopSignal()
  stopper = periodic.Stopper(signal, mesh, stop_at=2)
  assert not stopper()
  stopper.reached(1, last=False)
  assert not stopper()
  stopper.reached(2, last=False)
  assert stopper() and signal.received == "stop_at=2"
  # stop_at at the last step is a normal end, not a stop.
  signal = interrupt.StopSignal()
  stopper = periodic.Stopper(signal, mesh, stop_at=4)
  stopper.reached(4, last=True)
  assert not stopper() and not stopper.after_loop(False)
  # A signal: stop before the next step; one after the last step still counts.
  signal.received = "SIGTERM"
  assert stopper() and stopper.after_loop(False)
  assert periodic.any_process(True) and not periodic.any_process(False)


# --- the summary ------------------------------------------------------------------------


def test_summary_median_of_the_last_20_evaluations(tmp_path, capsys):
  evals = {s: {"eval/top1": float(s), "pseudo/confusion": [[s, 0], [0, 1]]}
           for s in range(1, 31)}
  train = {"train/mask_rate": 0.5, "marginal": [0.4, 0.6]}
  s = periodic.summary(30, 30, False, "debiaspl", evals, train)
  assert s["final_top1"] == 30.0 and s["median_last20_top1"] == 20.5
  assert s["num_evals"] == 30 and s["final_pseudo_acc"] == 1.0
  assert s["final_mask_rate"] == 0.5 and s["final_marginal"] == [0.4, 0.6]
  periodic.write_summary(str(tmp_path), s, "ema")
  assert json.loads((tmp_path / "summary.json").read_text()) == s
  err = capsys.readouterr().err
  assert ("done: 30 steps; EMA test top-1 final 30.00%, median of the last 20 evals 20.50%; "
          "marginal min/max 0.400/0.600") in err
  empty = periodic.summary(0, 30, True, "fixmatch", {}, {})
  assert empty["final_top1"] is None and empty["median_last20_top1"] is None
  periodic.write_summary(str(tmp_path), empty, "ema")
  assert capsys.readouterr().err == ""  # an interrupted run: no closing lines


def test_stopwatch_reports_its_parts():
  watch = periodic.Stopwatch()
  with watch("log"):
    pass
  with pytest.raises(KeyError):
    with watch("evaluate"):
      raise KeyError("counted anyway")
  report = watch.report()
  assert set(report) == {"loop", "log", "evaluate"}
  watch.reset()
  assert set(watch.report()) == {"loop"}
