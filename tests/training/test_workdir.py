"""The run folder (dlpl_jax/training/workdir.py): usable or one line, one run at a time,
a stale lock taken over, the resume's config check, the non-finite marker. (The loop's
start-up refusals end to end: tests/training/test_loop.py.)"""

import json
import os

import pytest

from dlpl_jax import configs
from dlpl_jax.errors import UsageError
from dlpl_jax.training import workdir as workdir_lib


def one_line(e) -> str:
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


# --- prepare ----------------------------------------------------------------------------


class TestPrepare:

  def test_creates_the_folder_and_returns_its_absolute_path(self, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert workdir_lib.prepare("a/b") == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert os.listdir(tmp_path / "a" / "b") == []  # the write probe is removed

  def test_a_file_as_workdir_is_one_line(self, tmp_path):
    (tmp_path / "f").write_text("x")
    for wd in (tmp_path / "f", tmp_path / "f" / "below"):
      with pytest.raises(UsageError, match="cannot use workdir") as e:
        workdir_lib.prepare(str(wd))
      assert str(wd) in one_line(e)

  @pytest.mark.parametrize("name", ["metrics.jsonl", "config.json", "summary.json"])
  def test_a_run_file_that_is_a_folder(self, tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(UsageError, match=f"{name} exists and is not a file") as e:
      workdir_lib.prepare(str(tmp_path))
    one_line(e)

  @pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                      reason="root ignores file permissions")
  def test_read_only_folder(self, tmp_path):
    os.chmod(tmp_path, 0o500)
    try:
      with pytest.raises(UsageError, match="Permission denied") as e:
        workdir_lib.prepare(str(tmp_path))
      one_line(e)
    finally:
      os.chmod(tmp_path, 0o700)


# --- the lock ---------------------------------------------------------------------------


class TestLock:

  def test_a_second_holder_is_refused_naming_the_first(self, tmp_path):
    with workdir_lib.Lock(str(tmp_path)):
      info = json.loads((tmp_path / ".lock").read_text())
      assert info["pid"] == os.getpid() and info["host"] and info["started"]
      with pytest.raises(UsageError, match=rf"in use by another run \(pid {os.getpid()} on") as e:
        workdir_lib.Lock(str(tmp_path)).acquire()
      assert "another --workdir" in one_line(e)
    assert (tmp_path / ".lock").read_text() == ""  # released, empty
    with workdir_lib.Lock(str(tmp_path)):  # free again
      pass

  def test_lock_of_a_dead_process_is_taken_over(self, tmp_path):
    # What kill -9 leaves: the lock file with its holder, but no flock (the kernel drops it).
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999, "host": "h", "started": "t"}))
    logs = []
    with workdir_lib.Lock(str(tmp_path), log=logs.append):
      assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert len(logs) == 1
    assert logs[0].startswith("took over the lock of a run that is no longer running "
                              "(pid 999999 on h, started t)")
    assert (tmp_path / ".lock").read_text() == ""  # released on exit

  def test_a_clean_exit_leaves_nothing_to_take_over(self, tmp_path):
    logs = []
    with workdir_lib.Lock(str(tmp_path), log=logs.append):
      pass
    with workdir_lib.Lock(str(tmp_path), log=logs.append):
      pass
    assert logs == []


# --- the resume's config check ----------------------------------------------------------


def _config(tiny_config, **overrides):
  return configs.to_dict(tiny_config(**overrides))


class TestCheckConfig:

  def test_equal_or_non_training_changes_pass(self, tmp_path, tiny_config):
    workdir_lib.write_config(str(tmp_path), _config(tiny_config))
    assert workdir_lib.check_config(str(tmp_path), _config(tiny_config), 2, False) == []
    changed = _config(tiny_config, log_every=5, eval_every=4, checkpoint_every=3,
                      progress=True, keep_checkpoints=9, eval_batch_size=32)
    assert workdir_lib.check_config(str(tmp_path), changed, 2, False) == []
    assert not (tmp_path / workdir_lib.CHANGES_FILE).exists()

  def test_a_changed_config_is_refused_naming_the_keys(self, tmp_path, tiny_config):
    workdir_lib.write_config(str(tmp_path), _config(tiny_config))
    changed = _config(tiny_config, method="fixmatch", total_steps=6)
    with pytest.raises(UsageError) as e:
      workdir_lib.check_config(str(tmp_path), changed, 2, False)
    msg = one_line(e)
    assert "method: 'debiaspl' -> 'fixmatch'" in msg and "total_steps: 4 -> 6" in msg
    assert "at step 2" in msg and "--allow_config_change" in msg
    assert not (tmp_path / workdir_lib.CHANGES_FILE).exists()

  def test_an_allowed_change_is_recorded(self, tmp_path, tiny_config):
    workdir_lib.write_config(str(tmp_path), _config(tiny_config))
    changed = _config(tiny_config, method="fixmatch")
    logs = []
    diff = workdir_lib.check_config(str(tmp_path), changed, 3, True, log=logs.append)
    assert diff == [("method", "debiaspl", "fixmatch")]
    assert "changed config (method: 'debiaspl' -> 'fixmatch')" in logs[0]
    change = json.loads((tmp_path / workdir_lib.CHANGES_FILE).read_text())
    assert change == {"step": 3, "changes": [["method", "debiaspl", "fixmatch"]]}
    # Another process of the same run does not record it again.
    assert workdir_lib.check_config(str(tmp_path), changed, 3, True, log=logs.append,
                                    record=False) == diff
    assert len((tmp_path / workdir_lib.CHANGES_FILE).read_text().splitlines()) == 1

  def test_stored_run_without_the_recipe_keys_is_unchanged(self, tmp_path, tiny_config):
    """A config.json from before the recipe's options were added: they count as their
    defaults (off)."""
    current = _config(tiny_config)
    stored = {k: v for k, v in current.items() if k not in configs.RECIPE_DEFAULTS}
    workdir_lib.write_config(str(tmp_path), stored)
    assert workdir_lib.check_config(str(tmp_path), current, 2, False) == []
    with pytest.raises(UsageError, match=r"num_views: 1 -> 2"):
      workdir_lib.check_config(str(tmp_path), _config(tiny_config, num_views=2), 2, False)
    assert workdir_lib.check_config(str(tmp_path), _config(tiny_config, num_views=2), 2, True,
                                    log=lambda _: None) == [("num_views", 1, 2)]

  @pytest.mark.parametrize("content,match", [
      (b"\x00\xff{garbage", r"config.json cannot be read \("),
      (b"[1, 2]", "config.json holds a JSON list, not a config"),
  ])
  def test_a_damaged_config_json(self, tmp_path, tiny_config, content, match):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(UsageError, match=match) as e:
      workdir_lib.check_config(str(tmp_path), _config(tiny_config), 2, False)
    msg = one_line(e)
    assert "--allow_config_change" in msg and "another config" not in msg
    logs = []
    assert workdir_lib.check_config(str(tmp_path), _config(tiny_config), 2, True,
                                    log=logs.append) == []
    assert logs[0].startswith("note: ") and "continuing with the given config" in logs[0]

  def test_no_stored_config_is_a_note(self, tmp_path, tiny_config):
    logs = []
    assert workdir_lib.check_config(str(tmp_path), _config(tiny_config), 2, False,
                                    log=logs.append) == []
    assert "no config.json" in logs[0]

  def test_write_config_is_atomic_plain_json(self, tmp_path, tiny_config):
    workdir_lib.write_config(str(tmp_path), _config(tiny_config))
    assert os.listdir(tmp_path) == ["config.json"]  # no .tmp left
    stored = workdir_lib.read_config(str(tmp_path))
    assert stored == _config(tiny_config) and stored["lt"]["enabled"] is False
    assert workdir_lib.read_config(str(tmp_path / "nowhere")) is None


# --- the non-finite marker --------------------------------------------------------------


class TestNonFiniteMarker:

  def test_repeats_only_from_the_same_start_and_training_config(self, tmp_path, tiny_config):
    marker = workdir_lib.NonFiniteMarker(str(tmp_path))
    assert marker.read() is None and marker.repeats(None, _config(tiny_config)) is None
    marker.write(3, 2, _config(tiny_config, lr=1e30))
    assert marker.read()["step"] == 3
    assert marker.repeats(2, _config(tiny_config, lr=1e30))["step"] == 3
    assert marker.repeats(2, _config(tiny_config, lr=1e30, log_every=7)) is not None
    assert marker.repeats(None, _config(tiny_config, lr=1e30)) is None   # another start
    assert marker.repeats(2, _config(tiny_config)) is None              # another config
    marker.clear()
    assert marker.read() is None and not (tmp_path / workdir_lib.NONFINITE_FILE).exists()
    marker.clear()  # nothing to clear: no error

  def test_a_damaged_marker_reads_as_none(self, tmp_path):
    (tmp_path / workdir_lib.NONFINITE_FILE).write_text("{not json")
    assert workdir_lib.NonFiniteMarker(str(tmp_path)).read() is None
