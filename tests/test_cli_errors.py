"""dlpl_jax.errors, the error handling every command shares: one line starting
"[dlpl_jax] error:" on stderr, exit status 2 for bad input and 1 for a failure while
running, output paths checked before any work, .npz files read without numpy's pickle
hint. The tools' own cases are in their test modules."""

import errno
import io
import os
import zipfile

import numpy as np
import pytest

from dlpl_jax.tools import analyze
from dlpl_jax.tools import compact_data
from dlpl_jax.tools import convert
from dlpl_jax import errors
from dlpl_jax.data import npz
from dlpl_jax.tools import zeroshot


def _one_error_line(capsys) -> str:
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("[dlpl_jax] error: "), captured.err
  return lines[0]


def _raise(e):
  def body():
    raise e
  return body


class TestRunCommand:

  def test_status_and_one_line(self, capsys):
    assert errors.run_command(lambda: None) == 0
    assert errors.run_command(lambda: 3) == 3
    assert capsys.readouterr().err == ""
    assert errors.run_command(_raise(errors.UsageError("bad value\n  second line"))) == 2
    assert _one_error_line(capsys) == "[dlpl_jax] error: bad value second line"
    assert errors.run_command(_raise(errors.RunError("diverged"))) == 1
    assert _one_error_line(capsys) == "[dlpl_jax] error: diverged"

  def test_os_errors_on_given_paths_are_usage_errors(self, capsys, tmp_path):
    out = str(tmp_path / "out")
    ro = OSError(errno.EROFS, "Read-only file system", os.path.join(out, "a.png"))
    assert errors.run_command(_raise(ro), paths=(out,)) == 2
    assert _one_error_line(capsys).endswith(f"Read-only file system: {out}/a.png")
    # The same error on a path the command was not given: a failure while running.
    assert errors.run_command(_raise(ro), paths=(str(tmp_path / "other"),)) == 1
    capsys.readouterr()
    # A full disk under the given path is a failure while running, not bad input.
    full = OSError(errno.ENOSPC, "No space left on device", out)
    assert errors.run_command(_raise(full), paths=(out,)) == 1
    assert "No space left on device" in _one_error_line(capsys)

  def test_other_exceptions_keep_their_traceback(self):
    with pytest.raises(ZeroDivisionError):
      errors.run_command(lambda: 1 / 0)


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


def _npy_in(path, array):
  with open(path, "wb") as f:  # np.save(path) would add .npy to the name
    np.save(f, array)


def _zip_with_text_member(path):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("notes.txt", "hello")


class TestReadNpz:

  @pytest.mark.parametrize("make, match", [
      (lambda p: p.write_bytes(b"\x00garbage" * 50), "not a zip archive of .npy files"),
      (lambda p: p.write_bytes(b""), "not a valid .npz of arrays"),
      (lambda p: _npy_in(p, np.zeros(3)), "a single .npy array"),
      (lambda p: np.savez(p, a=np.array([{"x": 1}], dtype=object)),
       "holds an array of Python objects"),
      (_zip_with_text_member, "member 'notes.txt' is not an .npy array"),
  ])
  def test_not_an_npz_of_arrays(self, tmp_path, make, match):
    path = tmp_path / "x.npz"
    make(path)
    with pytest.raises(errors.UsageError, match=match) as e:
      npz.read_npz(str(path))
    assert "allow_pickle" not in str(e.value) and str(path) in str(e.value)

  def test_truncated_and_absent(self, tmp_path):
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(1000))
    path = tmp_path / "t.npz"
    path.write_bytes(buf.getvalue()[:-100])
    with pytest.raises(errors.UsageError, match="truncated or damaged"):
      npz.read_npz(str(path))
    with pytest.raises(errors.UsageError, match="cannot read .*absent.npz: No such file"):
      npz.read_npz(str(tmp_path / "absent.npz"))
    path.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(npz.read_npz(str(path))["a"], np.arange(1000))


@pytest.mark.parametrize("main, argv, match", [
    (analyze.main, [], "the following arguments are required: WORKDIR"),
    (zeroshot.main, [], "the following arguments are required: --logits"),
    (zeroshot.main, ["--logits", "x.npz", "--tau"], "expected one argument"),
    (convert.main, ["--pth", "x.npz"], "the following arguments are required: --out"),
    (compact_data.main, ["--out", "x.npz", "--quality", "high"], "invalid int value"),
])
def test_argument_errors_are_one_line_with_status_2(capsys, main, argv, match):
  with pytest.raises(SystemExit) as e:
    main(argv)
  assert e.value.code == 2
  line = _one_error_line(capsys)
  assert match in line and "--help" in line
