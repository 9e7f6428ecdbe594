"""Faults in the trainer, in process on synthetic data: each ends in the last good state
and one clear message. (Signals and exit statuses: tests/test_main.py.)"""

import json
import os

import numpy as np
import pytest

from dlpl_jax.training import checkpoint
from dlpl_jax import configs
from dlpl_jax.training import metrics as metrics_lib
from dlpl_jax.training import step as train
from dlpl_jax.training import loop as trainer
from dlpl_jax.training import workdir as workdir_lib
from dlpl_jax.errors import UsageError
from tests.test_train import DATA, tiny_config


def run(c, wd, **kw):
  return trainer.train_and_evaluate(c, str(wd), data=DATA, **kw)


def records(wd):
  with open(os.path.join(wd, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line, parse_constant=lambda x: pytest.fail(f"bare {x} in JSON"))
            for line in f]


def steps_of(wd):
  return sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit())


class TestWorkdir:

  def test_a_file_as_workdir_is_one_line(self, tmp_path):
    (tmp_path / "f").write_text("x")
    for wd in (tmp_path / "f", tmp_path / "f" / "below"):
      with pytest.raises(UsageError, match="cannot use workdir") as e:
        run(tiny_config(), wd)
      assert "\n" not in str(e.value)

  def test_metrics_file_that_is_a_folder(self, tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(UsageError, match="metrics.jsonl exists and is not a file"):
      run(tiny_config(), tmp_path)

  def test_checkpoints_that_is_a_file_fails_before_training(self, tmp_path):
    (tmp_path / "checkpoints").write_text("x")
    with pytest.raises(UsageError, match="checkpoint folder .* not a folder"):
      run(tiny_config(), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()

  def test_second_run_on_a_workdir_is_refused_naming_the_holder(self, tmp_path):
    with workdir_lib.Lock(str(tmp_path)):
      with pytest.raises(UsageError, match=rf"in use by another run \(pid {os.getpid()} on"):
        run(tiny_config(), tmp_path)
    assert not (tmp_path / "checkpoints").exists()

  def test_lock_of_a_dead_process_is_taken_over(self, tmp_path, capsys):
    # What kill -9 leaves: the lock file with its holder, but no flock (the kernel drops it).
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999, "host": "h", "started": "t"}))
    assert run(tiny_config(total_steps=2), tmp_path)["step"] == 2
    assert "took over the lock of a run that is no longer running (pid 999999" in (
        capsys.readouterr().err)
    assert (tmp_path / ".lock").read_text() == ""  # released on exit


class TestConfig:

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
  def test_bad_values_refused_before_any_data(self, tmp_path, key, value, match):
    c = tiny_config()
    c[key] = value
    with pytest.raises(UsageError, match=match):
      trainer.train_and_evaluate(c, str(tmp_path))  # data=None: nothing may be read
    assert not os.listdir(tmp_path)

  def test_streaming_with_long_tail_refused(self):
    c = tiny_config(in_memory=False)
    c.lt.enabled = True
    with pytest.raises(UsageError, match="need in_memory=True"):
      configs.validate(c)

  def test_resume_refuses_a_changed_config_naming_the_keys(self, tmp_path, capsys):
    run(tiny_config(), tmp_path, stop_at=2)
    changed = tiny_config(method="fixmatch", total_steps=6)
    with pytest.raises(UsageError) as e:
      run(changed, tmp_path)
    msg = str(e.value)
    assert "method: 'debiaspl' -> 'fixmatch'" in msg and "total_steps: 4 -> 6" in msg
    assert "--allow_config_change" in msg and "\n" not in msg
    assert json.load(open(tmp_path / "config.json"))["method"] == "debiaspl"  # untouched
    # Keys that do not change training may change; with the flag, the change is recorded.
    assert run(tiny_config(log_every=2, eval_every=4), tmp_path, stop_at=3)["step"] == 3
    assert run(changed, tmp_path, allow_config_change=True)["step"] == 6
    change = json.loads((tmp_path / "config_changes.jsonl").read_text())
    assert change["step"] == 3 and ["method", "debiaspl", "fixmatch"] in change["changes"]
    assert json.load(open(tmp_path / "config.json"))["method"] == "fixmatch"

  def test_resume_with_a_damaged_config_json_or_metrics_file(self, tmp_path, capsys):
    """A config.json that is not JSON is named as such (not "another config" listing
    every key); bytes that are not UTF-8 in metrics.jsonl are dropped like a torn line."""
    run(tiny_config(), tmp_path, stop_at=2)
    (tmp_path / "config.json").write_bytes(b"\x00\xff{garbage")
    with open(tmp_path / "metrics.jsonl", "ab") as f:
      f.write(b"\xff\xfe not json\n")
    with pytest.raises(UsageError, match=r"config.json cannot be read .*"
                                         r"--allow_config_change") as e:
      run(tiny_config(), tmp_path)
    assert "another config" not in str(e.value) and "\n" not in str(e.value)
    assert run(tiny_config(), tmp_path, allow_config_change=True)["step"] == 4
    assert "dropped 1 unreadable line(s)" in capsys.readouterr().err
    assert json.load(open(tmp_path / "config.json"))["method"] == "debiaspl"
    assert [(r["step"], r["kind"]) for r in records(tmp_path)][-1] == (4, "eval")

  def test_heavy_config_refused_on_cpu(self, tmp_path):
    c = configs.get_base_config()  # WRN-28-2 for 2^20 steps
    with pytest.raises(UsageError, match=r"needs a GPU/TPU.*--allow_cpu") as e:
      trainer.train_and_evaluate(c, str(tmp_path), allow_cpu=False)
    assert "h on one H100" in str(e.value) and "days on this CPU" in str(e.value)


class TestNonFinite:

  def test_inf_lr_saves_nothing_and_says_so(self, tmp_path):
    c = tiny_config(lr=1e30, checkpoint_every=1)
    with pytest.raises(trainer.NonFiniteLossError, match="at step 1.*Last good checkpoint: "
                       "none. No checkpoint was written yet"):
      run(c, tmp_path)
    assert steps_of(tmp_path) == []

  def test_nan_after_good_checkpoints_points_to_them_and_warns_on_rerun(self, tmp_path,
                                                                        capsys):
    run(tiny_config(total_steps=4), tmp_path, stop_at=2)
    bad = tiny_config(total_steps=4, lr=1e30)
    with pytest.raises(trainer.NonFiniteLossError,
                       match=r"at step 3.*Last good checkpoint: step 2 .*--restore_step=K "
                             r"\(kept: \[2\]\)"):
      run(bad, tmp_path, allow_config_change=True)
    assert steps_of(tmp_path) == [2]
    capsys.readouterr()
    with pytest.raises(trainer.NonFiniteLossError):
      run(bad, tmp_path, allow_config_change=True)
    assert "stopped on non-finite values at step 3 and will again" in capsys.readouterr().err
    # The good config goes on from step 2 and finishes; the marker is gone.
    assert run(tiny_config(total_steps=4), tmp_path, allow_config_change=True)["step"] == 4
    assert not (tmp_path / "nonfinite.json").exists()

  def test_restore_step_resumes_from_an_older_checkpoint(self, tmp_path):
    c = tiny_config(total_steps=4, checkpoint_every=1)
    run(c, tmp_path)
    assert steps_of(tmp_path)[-1] == 4
    s = run(c, tmp_path, restore_step=2)
    assert s["step"] == 4 and not s["interrupted"]
    assert sorted(os.listdir(tmp_path / "checkpoints" / "set_aside")) == ["3", "4"]
    steps = [(r["step"], r["kind"]) for r in records(tmp_path)]
    assert len(steps) == len(set(steps))


class TestDamagedCheckpoint:

  def test_newest_damaged_falls_back_to_older_in_one_line(self, tmp_path, capsys):
    c = tiny_config(total_steps=4)
    run(c, tmp_path, stop_at=3)  # checkpoints 2 and 3
    for root, _, files in os.walk(tmp_path / "checkpoints" / "3" / "state"):
      for name in files:
        if "_METADATA" in name:
          os.remove(os.path.join(root, name))
    capsys.readouterr()
    s = run(c, tmp_path)
    err = capsys.readouterr().err
    assert s["step"] == 4
    assert "checkpoint step 3 in" in err and "is damaged" in err and "using step 2" in err
    assert "resumed from" in err and "at step 2" in err
    assert "Traceback" not in err
    assert os.listdir(tmp_path / "checkpoints" / "set_aside") == ["3"]  # nothing deleted

  def test_other_model_in_workdir_is_one_line(self, tmp_path):
    run(tiny_config(total_steps=2), tmp_path)
    with pytest.raises(UsageError, match="holds a different model") as e:
      run(tiny_config(total_steps=4, model="wrn28_2"), tmp_path, allow_config_change=True)
    assert "\n" not in str(e.value)


class TestMetrics:

  @pytest.mark.parametrize("n", [1, 3, 4, 7, 128, 130])
  def test_a_window_of_metrics_is_fetched_whole_and_in_order(self, n):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(n)
    loss = rng.normal(size=n).astype(np.float32)
    per_step = [{"train/loss": jnp.float32(x), "count": jnp.int32(i)}
                for i, x in enumerate(loss)]
    got = trainer._fetch_metrics(per_step)  # pylint: disable=protected-access
    np.testing.assert_array_equal(got["train/loss"], loss)
    np.testing.assert_array_equal(got["count"], np.arange(n))
    assert got["count"].dtype == np.int32

  def test_resume_writes_each_step_and_kind_once_like_an_uninterrupted_run(self, tmp_path):
    c = tiny_config(total_steps=6, eval_every=2, log_every=1, checkpoint_every=2)
    run(c, tmp_path / "full")
    full = [(r["step"], r["kind"]) for r in records(tmp_path / "full")]
    wd = tmp_path / "part"
    run(c, wd, stop_at=3)  # checkpoint at 3; then pretend a crash left rows up to 5
    with open(wd / "metrics.jsonl", "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": 4, "kind": "train", "train/loss": 1.0}) + "\n")
      f.write('{"step": 5, "kind": "tra')  # torn last line
    run(c, wd)
    part = [(r["step"], r["kind"]) for r in records(wd)]
    assert sorted(part) == sorted(full)
    tb = _tensorboard_steps(wd / "tensorboard")
    assert tb["train/loss"] == [1, 2, 3, 4, 5, 6] and tb["eval/top1"] == [2, 4, 6]

  def test_stop_writes_the_steps_since_the_last_log(self, tmp_path):
    run(tiny_config(total_steps=8, log_every=4, eval_every=4), tmp_path, stop_at=3)
    assert [r["step"] for r in records(tmp_path) if r["kind"] == "train"] == [3]

  def test_undefined_values_are_null_and_names_are_single(self, tmp_path):
    run(tiny_config(total_steps=2, threshold=1.0), tmp_path)  # nothing is confident
    recs = records(tmp_path)
    train_rec = [r for r in recs if r["kind"] == "train"][-1]
    assert train_rec["pseudo_masked/acc"] is None and train_rec["train/mask_rate"] == 0.0
    assert "pseudo/acc_all" not in train_rec and "pseudo/acc_masked" not in train_rec
    ev = [r for r in recs if r["kind"] == "eval"][-1]
    assert not any(k.startswith("pseudo/") and k != "pseudo/confusion" for k in ev)
    assert "marginal" not in ev and "pseudo/confusion" in ev
    tags = _tensorboard_steps(tmp_path / "tensorboard")
    assert "marginal/airplane" in tags and "eval/per_class/truck" in tags
    assert "pseudo/confusion" in tags  # as a text table

  def test_per_class_accuracy_of_a_class_not_in_the_test_subset_is_null(self, tmp_path):
    few = DATA._replace(x_test=DATA.x_test[:3], y_test=DATA.y_test[:3])
    trainer.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path), data=few)
    ev = [r for r in records(tmp_path) if r["kind"] == "eval"][-1]
    present = set(np.asarray(few.y_test).tolist())
    assert [c for c, v in enumerate(ev["eval/per_class"]) if v is not None] == sorted(present)


def _tensorboard_steps(logdir) -> dict:
  """{tag: sorted steps} over all event files; fails on a (tag, step) written twice."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seen = {}
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
      for v in event.summary.value:
        assert event.step not in seen.get(v.tag, []), (v.tag, event.step)
        seen.setdefault(v.tag, []).append(event.step)
  return {k: sorted(v) for k, v in seen.items()}
