"""The training loop, end to end in process on the tiny config and synthetic data
(dlpl_jax/training/loop.py): start-up refusals before anything is trained, a stop during
start-up, resume equal to an uninterrupted run, stop_at, restore_step, the resume's config
check, damaged and foreign checkpoints, non-finite stops, and the metrics written once per
(step, kind). Each fault ends in the last good state and one clear message. (Signals and
exit statuses on the command line: tests/e2e/test_command_line.py.)

Every run here uses the tiny config with total_steps = 4 and changes only keys that leave
the jitted step as it is, so that it compiles once per process; the two base runs
(uninterrupted, and stopped at step 2) are trained once and copied.
"""

import json
import os
import shutil

import flax
import jax
import numpy as np
import pytest

from dlpl_jax.errors import UsageError
from dlpl_jax.training import checkpoint
from dlpl_jax.training import inputs
from dlpl_jax.training import interrupt
from dlpl_jax.training import loop
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import setup
from dlpl_jax.training import workdir as workdir_lib

_BASE_RUNS = {}  # name -> (workdir, summary): trained once per process


@pytest.fixture
def run(tiny_data):
  """``run(config, workdir, **kw)``: train_and_evaluate on the tiny data."""
  def go(c, wd, **kw):
    return loop.train_and_evaluate(c, str(wd), data=tiny_data, **kw)
  return go


@pytest.fixture
def stored(tiny_config, tiny_data, tmp_path_factory, tmp_path):
  """``stored(name)``: ``(copy of the run's workdir, its summary)`` for the tiny config's
  run ``"full"`` (4 steps: checkpoints 2 and 4, evaluations 2 and 4) or ``"half"`` (the
  same stopped at step 2, with its checkpoint)."""
  def copy(name):
    if name not in _BASE_RUNS:
      wd = tmp_path_factory.mktemp(f"base_{name}") / "run"
      summary = loop.train_and_evaluate(tiny_config(), str(wd), data=tiny_data,
                                        stop_at=2 if name == "half" else None)
      _BASE_RUNS[name] = (wd, summary)
    wd, summary = _BASE_RUNS[name]
    dst = tmp_path / name
    shutil.copytree(wd, dst)
    return dst, summary
  return copy


def records(wd):
  with open(os.path.join(wd, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line, parse_constant=lambda x: pytest.fail(f"bare {x} in JSON"))
            for line in f]


def steps_of(wd):
  return sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit())


def one_line(e) -> str:
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


# --- start-up: refused or stopped before anything is trained ----------------------------


@pytest.mark.parametrize("key,value,match", [
    ("lr", -1.0, "lr must be a finite number > 0"),
    ("lr", float("inf"), "lr must be a finite number"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("weight_decay", -1.0, "weight_decay must be a finite number >= 0"),
    ("momentum", 2.0, r"momentum must be a finite number in \[0, 1\)"),
    ("lambda_u", -1.0, "lambda_u must be a finite number >= 0"),
    ("eval_examples", -1, "eval_examples must be >= 0"),
    ("eval_examples", 20000, "exceeds the 10000 test images"),
    ("cosine_factor", float("nan"), "cosine_factor must be a finite number"),
    ("cosine_factor", 0.8, r"cosine_factor must be a finite number in \[0, 0.5\]"),
    ("tau", float("inf"), "tau must be a finite number"),
    ("threshold", 1.5, "threshold must be a finite number in"),
    ("labels_per_class", 6000, "exceeds the 5000 training images"),
    ("num_classes", 7, "cifar10 has 10 classes"),
    ("model", "resnet", "model must be"),
    ("seed", 2**32, r"seed must be in \[0, 2\*\*32\)"),  # PRNGKey(2**32) == PRNGKey(0)
    ("labeled_seed", -1, r"labeled_seed must be in \[0, 2\*\*32\)"),
])
def test_bad_values_refused_before_any_data(tmp_path, tiny_config, key, value, match):
  with pytest.raises(UsageError, match=match):
    loop.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path))  # no data: none read
  assert not os.listdir(tmp_path)


def test_an_unusable_workdir_is_one_line_before_training(tmp_path, tiny_config, run):
  (tmp_path / "f").write_text("x")
  for wd in (tmp_path / "f", tmp_path / "f" / "below"):
    with pytest.raises(UsageError, match="cannot use workdir") as e:
      run(tiny_config(), wd)
    one_line(e)
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "metrics.jsonl").mkdir()
  with pytest.raises(UsageError, match="metrics.jsonl exists and is not a file"):
    run(tiny_config(), tmp_path / "a")
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "checkpoints").write_text("x")
  with pytest.raises(UsageError, match="checkpoint folder .* not a folder") as e:
    run(tiny_config(), tmp_path / "b")
  one_line(e)
  assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_a_second_run_on_a_workdir_is_refused_naming_the_holder(tmp_path, tiny_config, run):
  with workdir_lib.Lock(str(tmp_path)):
    with pytest.raises(UsageError, match=rf"in use by another run \(pid {os.getpid()} on"):
      run(tiny_config(), tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_a_heavy_config_is_refused_on_cpu(tmp_path):
  from dlpl_jax import configs  # pylint: disable=g-import-not-at-top
  with pytest.raises(UsageError, match=r"needs a GPU/TPU.*--allow_cpu") as e:
    loop.train_and_evaluate(configs.get_base_config(), str(tmp_path), allow_cpu=False)
  assert "h on one H100" in str(e.value) and "days on this CPU" in str(e.value)
  assert not (tmp_path / "checkpoints").exists()


def test_a_stop_during_start_up_trains_nothing(tmp_path, tiny_config, run, stored, capsys):
  stop = interrupt.StopSignal()
  stop.received = "SIGTERM"
  assert run(tiny_config(), tmp_path / "new", stop=stop) == {"step": 0, "interrupted": True}
  assert steps_of(tmp_path / "new") == []
  assert ("SIGTERM received during start-up: nothing was trained; the run in "
          f"{tmp_path / 'new'} is at step 0. Re-run the same command to start it"
          ) in capsys.readouterr().err
  half, _ = stored("half")
  capsys.readouterr()
  assert run(tiny_config(), half, stop=stop) == {"step": 2, "interrupted": True}
  assert "is at step 2" in capsys.readouterr().err
  assert steps_of(half) == [2]
  assert [(r["step"], r["kind"]) for r in records(half)][-1] == (2, "eval")


# --- resume, stop_at, restore_step ------------------------------------------------------


def _leaves(state):
  return jax.device_get(jax.tree_util.tree_leaves(
      (state.params, state.batch_stats, state.opt_state, state.ema_params, state.marginal)))


def test_resume_gives_the_uninterrupted_state(tiny_config, run, stored, capsys):
  full, s_full = stored("full")
  part, s_part = stored("half")
  assert not s_full["interrupted"] and s_full["step"] == 4
  assert s_part["interrupted"] and s_part["step"] == 2
  # What kill -9 leaves: a lock file naming a dead holder, but no flock.
  (part / ".lock").write_text(json.dumps({"pid": 999999, "host": "h", "started": "t"}))
  capsys.readouterr()
  s_rest = run(tiny_config(), part)
  assert not s_rest["interrupted"] and s_rest["step"] == 4
  assert "took over the lock of a run that is no longer running (pid 999999" in (
      capsys.readouterr().err)
  assert (part / ".lock").read_text() == ""  # released on exit
  assert json.loads((part / "summary.json").read_text())["step"] == 4
  spec = setup.read(tiny_config())
  template = setup.new_state(spec, mesh_lib.make_mesh())
  full_state, step_f = checkpoint.Checkpointer(str(full), 2, 3).restore_latest(template)
  part_state, step_p = checkpoint.Checkpointer(str(part), 2, 3).restore_latest(template)
  assert step_f == step_p == 4
  for a, b in zip(_leaves(full_state), _leaves(part_state)):
    np.testing.assert_array_equal(a, b)
  # The marginal was restored, not reset to uniform, and the metrics are complete.
  assert np.abs(np.asarray(part_state.marginal) - 0.1).max() > 1e-4
  assert [r["step"] for r in records(part) if r["kind"] == "eval"] == [2, 4]
  assert s_rest["final_top1"] == s_full["final_top1"]


def test_resume_writes_each_step_and_kind_once_like_an_uninterrupted_run(
    tiny_config, run, stored, tensorboard_tags):
  full, _ = stored("full")
  wd, _ = stored("half")  # checkpoint at 2; then pretend a crash left rows after it
  with open(wd / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": 3, "kind": "train", "train/loss": 1.0}) + "\n")
    f.write('{"step": 4, "kind": "tra')  # torn last line
  run(tiny_config(), wd)
  assert sorted((r["step"], r["kind"]) for r in records(wd)) == sorted(
      (r["step"], r["kind"]) for r in records(full))
  tb = tensorboard_tags(wd / "tensorboard")
  assert tb["train/loss"] == [1, 2, 3, 4] and tb["eval/top1"] == [2, 4]


def test_the_records_have_single_names_and_undefined_values_are_null(stored,
                                                                     tensorboard_tags):
  wd, _ = stored("full")
  recs = records(wd)
  assert [(r["step"], r["kind"]) for r in recs] == [
      (1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train"), (4, "eval")]
  for r in recs:
    if r["kind"] == "train":
      assert "pseudo/acc_all" not in r and "pseudo/acc_masked" not in r
      assert len(r["marginal"]) == 10 and r["train/lr"] > 0
      # No confident pseudo-label since the last evaluation: undefined, not 0.
      assert (r["pseudo_masked/acc"] is None) == (sum(r["pseudo_masked/counts"]) == 0)
  ev = [r for r in recs if r["kind"] == "eval"][-1]
  assert not any(k.startswith("pseudo/") and k != "pseudo/confusion" for k in ev)
  assert "marginal" not in ev and "pseudo/confusion" in ev and "pseudo_masked/confusion" in ev
  tags = tensorboard_tags(wd / "tensorboard")
  assert "marginal/airplane" in tags and "eval/per_class/truck" in tags
  assert "pseudo/confusion" in tags  # as a text table
  for name in ("class_features.npz", "features/class_features_2.npz",
               "features/class_features_4.npz", "summary.json", "config.json"):
    assert (wd / name).is_file(), name


def test_a_stop_writes_the_steps_since_the_last_log(tiny_config, run, stored, capsys):
  wd, _ = stored("half")
  capsys.readouterr()
  s = run(tiny_config(log_every=4, eval_every=4), wd, stop_at=3)
  assert s["interrupted"] and s["step"] == 3
  assert [r["step"] for r in records(wd) if r["kind"] == "train" and r["step"] > 2] == [3]
  assert steps_of(wd) == [2, 3]
  assert "stop_at=3: checkpoint saved at step 3" in capsys.readouterr().err


def test_restore_step_resumes_from_an_older_checkpoint(tiny_config, run, stored, capsys):
  wd, _ = stored("full")
  assert steps_of(wd) == [2, 4]
  capsys.readouterr()
  s = run(tiny_config(), wd, restore_step=2)
  assert s["step"] == 4 and not s["interrupted"]
  assert "resuming from step 2: newer checkpoints [4] moved to" in capsys.readouterr().err
  assert os.listdir(wd / "checkpoints" / "set_aside") == ["4"]
  assert steps_of(wd) == [2, 4]
  steps = [(r["step"], r["kind"]) for r in records(wd)]
  assert len(steps) == len(set(steps)) and steps[-1] == (4, "eval")
  with pytest.raises(UsageError, match="saved steps: 2, 4"):
    run(tiny_config(), wd, restore_step=3)


# --- the resume's config check ----------------------------------------------------------


def test_resume_refuses_a_changed_config_naming_the_keys(tiny_config, run, stored):
  wd, _ = stored("half")
  changed = tiny_config(method="fixmatch", total_steps=6)
  with pytest.raises(UsageError) as e:
    run(changed, wd)
  msg = one_line(e)
  assert "method: 'debiaspl' -> 'fixmatch'" in msg and "total_steps: 4 -> 6" in msg
  assert "--allow_config_change" in msg
  assert json.load(open(wd / "config.json"))["method"] == "debiaspl"  # untouched
  # Keys that do not change training may change; with the flag, the change is recorded.
  assert run(tiny_config(log_every=2, eval_every=4), wd, stop_at=3)["step"] == 3
  other_subset = tiny_config(labeled_seed=1)  # changes training, not the compiled step
  with pytest.raises(UsageError, match="labeled_seed: 0 -> 1"):
    run(other_subset, wd)
  assert run(other_subset, wd, allow_config_change=True)["step"] == 4
  change = json.loads((wd / "config_changes.jsonl").read_text())
  assert change == {"step": 3, "changes": [["labeled_seed", 0, 1]]}
  assert json.load(open(wd / "config.json"))["labeled_seed"] == 1


def test_resume_with_a_damaged_config_json_or_metrics_file(tiny_config, run, stored, capsys):
  """A config.json that is not JSON is named as such (not "another config" listing
  every key); bytes that are not UTF-8 in metrics.jsonl are dropped like a torn line."""
  wd, _ = stored("half")
  (wd / "config.json").write_bytes(b"\x00\xff{garbage")
  with open(wd / "metrics.jsonl", "ab") as f:
    f.write(b"\xff\xfe not json\n")
  with pytest.raises(UsageError, match=r"config.json cannot be read .*"
                                       r"--allow_config_change") as e:
    run(tiny_config(), wd)
  assert "another config" not in one_line(e)
  capsys.readouterr()
  assert run(tiny_config(), wd, allow_config_change=True)["step"] == 4
  assert "dropped 1 unreadable line(s)" in capsys.readouterr().err
  assert json.load(open(wd / "config.json"))["method"] == "debiaspl"
  assert [(r["step"], r["kind"]) for r in records(wd)][-1] == (4, "eval")


# --- damaged and foreign checkpoints ----------------------------------------------------


def test_the_newest_damaged_checkpoint_falls_back_in_one_line(tiny_config, run, stored, capsys):
  wd, _ = stored("full")  # checkpoints 2 and 4
  for root, _, files in os.walk(wd / "checkpoints" / "4" / "state"):
    for name in files:
      if "_METADATA" in name:
        os.remove(os.path.join(root, name))
  capsys.readouterr()
  s = run(tiny_config(), wd)
  err = capsys.readouterr().err
  assert s["step"] == 4
  assert "checkpoint step 4 in" in err and "is damaged" in err and "using step 2" in err
  assert "resumed from" in err and "at step 2" in err
  assert "damaged checkpoints [4] moved to" in err
  assert "Traceback" not in err
  assert os.listdir(wd / "checkpoints" / "set_aside") == ["4"]  # nothing deleted


def test_another_model_in_the_workdir_is_one_line(tiny_config, run, stored):
  wd, _ = stored("full")
  other = tiny_config(dataset="cifar100", num_classes=100)  # another classifier
  with pytest.raises(UsageError, match="holds a different model") as e:
    run(other, wd, allow_config_change=True)
  assert "params/classifier/kernel: stored (128,10), expected (128,100)" in one_line(e)
  assert steps_of(wd) == [2, 4]


# --- non-finite stops -------------------------------------------------------------------


def test_a_non_finite_loss_stops_naming_the_step_and_saves_nothing(tmp_path, tiny_config, run):
  """Initial weights that overflow (a classifier of 3e38) make the first loss NaN."""
  spec = setup.read(tiny_config())
  fresh = setup.new_state(spec, mesh_lib.make_mesh())
  weights = {f"{c}/{'/'.join(map(str, k))}": np.asarray(v)
             for c, tree in (("params", fresh.params), ("batch_stats", fresh.batch_stats))
             for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items()}
  weights["params/classifier/kernel"] = np.full_like(weights["params/classifier/kernel"], 3e38)
  np.savez(tmp_path / "huge.npz", **weights)
  c = tiny_config(checkpoint_every=1, init_checkpoint=str(tmp_path / "huge.npz"))
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"^non-finite train/(loss|param_norm).* at step 1; stopped without "
                           r"saving. Last good checkpoint: none. No checkpoint was written "
                           r"yet") as e:
    run(c, tmp_path / "run")
  one_line(e)
  assert steps_of(tmp_path / "run") == []
  assert json.loads((tmp_path / "run" / "nonfinite.json").read_text())["step"] == 1


def test_nan_after_good_checkpoints_points_to_them_and_warns_on_rerun(tiny_config, run, stored,
                                                                      monkeypatch, capsys):
  """A run that diverges at step 3 (its loss made NaN from there on: the same compiled
  step as every other test here, not a new one for lr = 1e30)."""
  wd, _ = stored("half")
  step = inputs.in_memory_step

  def diverging(state, data, *, model, cfg):
    new, metrics = step(state, data=data, model=model, cfg=cfg)
    if int(new.step) >= 3:
      metrics = {**metrics, "train/loss": metrics["train/loss"] * np.nan}
    return new, metrics
  monkeypatch.setattr(inputs, "in_memory_step", diverging)
  bad = tiny_config(labeled_seed=1)  # another training config than the stored run's
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"^non-finite train/loss \(nan\) at step 3.*Last good checkpoint: "
                           r"step 2 .*--restore_step=K \(kept: \[2\]\)"):
    run(bad, wd, allow_config_change=True)
  assert steps_of(wd) == [2]
  capsys.readouterr()
  with pytest.raises(loop.NonFiniteLossError):
    run(bad, wd, allow_config_change=True)
  assert "stopped on non-finite values at step 3 and will again" in capsys.readouterr().err
  # The good config goes on from step 2 and finishes, without the warning; the marker is gone.
  monkeypatch.undo()
  assert run(tiny_config(), wd, allow_config_change=True)["step"] == 4
  assert "will again" not in capsys.readouterr().err
  assert not (wd / "nonfinite.json").exists()
