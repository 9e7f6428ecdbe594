"""dlpl_jax.errors, the error handling every command shares: one line starting
"[dlpl_jax] error:" on stderr, exit status 2 for bad input and 1 for a failure while
running, output paths checked before any work, a missing extra named with its install
command. Each command's own bad-input cases are in its test module."""

import errno
import os

import pytest

from dlpl_jax import errors


def _raise(e):
  def body():
    raise e
  return body


class TestRunCommand:

  def test_status_and_one_line(self, capsys, one_error_line):
    assert errors.run_command(lambda: None) == 0
    assert errors.run_command(lambda: 3) == 3
    assert capsys.readouterr().err == ""
    assert errors.run_command(_raise(errors.UsageError("bad value\n  second line"))) == 2
    assert one_error_line() == "[dlpl_jax] error: bad value second line"
    assert errors.run_command(_raise(errors.RunError("diverged"))) == 1
    assert one_error_line() == "[dlpl_jax] error: diverged"

  def test_os_errors_on_given_paths_are_usage_errors(self, capsys, tmp_path,
                                                     one_error_line):
    out = str(tmp_path / "out")
    ro = OSError(errno.EROFS, "Read-only file system", os.path.join(out, "a.png"))
    assert errors.run_command(_raise(ro), paths=(out,)) == 2
    assert one_error_line().endswith(f"Read-only file system: {out}/a.png")
    # The same error on a path the command was not given: a failure while running.
    assert errors.run_command(_raise(ro), paths=(str(tmp_path / "other"),)) == 1
    capsys.readouterr()
    # A full disk under the given path is a failure while running, not bad input.
    full = OSError(errno.ENOSPC, "No space left on device", out)
    assert errors.run_command(_raise(full), paths=(out,)) == 1
    assert "No space left on device" in one_error_line()
    # Empty paths (an option not given) are ignored.
    assert errors.run_command(_raise(ro), paths=("", None)) == 1

  def test_other_exceptions_keep_their_traceback(self):
    with pytest.raises(ZeroDivisionError):
      errors.run_command(lambda: 1 / 0)


def test_os_error_message_and_status(tmp_path):
  e = OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")
  assert errors.os_error_message(e) == "Invalid cross-device link: /a -> /b"
  assert errors.os_error_message(OSError("no path")) == "no path"
  missing = FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "in" / "x"))
  assert errors.os_error_status(missing, [str(tmp_path / "in")]) == 2
  assert errors.os_error_status(missing, [str(tmp_path / "i")]) == 1  # not a prefix match


def test_report_and_log(capsys):
  assert errors.report("two\nlines", 7) == 7
  assert capsys.readouterr().err == "[dlpl_jax] error: two lines\n"
  errors.log("hello")
  assert capsys.readouterr().err == "[dlpl_jax] hello\n"
  assert errors.UsageError.exit_code == 2 and errors.RunError.exit_code == 1
  assert issubclass(errors.UsageError, ValueError)


def test_require_names_the_extra():
  errors.require("train", "numpy", "json")  # installed: nothing happens
  with pytest.raises(errors.UsageError) as e:
    errors.require("analyze", "numpy", "no_such_module_xyz")
  assert str(e.value) == (
      "this needs the 'analyze' extra, which is not installed (no module named "
      "'no_such_module_xyz'): pip install 'dlpl_jax[analyze]'")


class TestCheckOutput:

  def test_usable_paths_create_nothing(self, tmp_path):
    errors.check_output(str(tmp_path / "new" / "deeper" / "f.json"))
    errors.check_output(str(tmp_path / "new" / "dir"), folder=True)
    errors.check_output(str(tmp_path), folder=True)
    (tmp_path / "f.json").write_text("{}")
    errors.check_output(str(tmp_path / "f.json"))  # an existing file is replaced
    assert os.listdir(tmp_path) == ["f.json"]

  @pytest.mark.parametrize("sub, folder, match", [
      ("afile", True, "--out .*afile is a file, not a folder"),
      ("afile/x", True, "afile is a file, not a folder"),
      ("afile/x/y.json", False, "afile is a file, not a folder"),
      ("adir", False, "adir is a folder; give the path of a file"),
  ])
  def test_unusable_paths(self, tmp_path, sub, folder, match):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(errors.UsageError, match=match):
      errors.check_output(str(tmp_path / sub), "--out", folder=folder)

  @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
  def test_read_only_folder(self, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    for path, folder in ((ro / "x", True), (ro / "x.json", False)):
      with pytest.raises(errors.UsageError, match="cannot write in .*ro"):
        errors.check_output(str(path), folder=folder)


def test_argument_parser_errors_are_one_line(one_error_line):
  p = errors.ArgumentParser(prog="dlpl-x")
  p.add_argument("--n", type=int, required=True)
  with pytest.raises(SystemExit) as e:
    p.parse_args(["--n", "many"])
  assert e.value.code == 2
  line = one_error_line()
  assert "invalid int value: 'many'" in line and line.endswith("(see dlpl-x --help)")


def test_absl_flags_errors_are_one_line_and_help_exits_0(capsys, one_error_line):
  from absl import app  # pylint: disable=import-outside-toplevel
  app.define_help_flags()  # as app.run does
  with pytest.raises(SystemExit) as e:
    errors.parse_absl_flags(["prog", "--no_such_flag_xyz=1"])
  assert e.value.code == 2 and "no_such_flag_xyz" in one_error_line()
  with pytest.raises(SystemExit) as e:
    errors.parse_absl_flags(["prog", "--help"])
  assert e.value.code == 0
  capsys.readouterr()
