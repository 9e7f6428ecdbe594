"""dlpl_jax.tools.compact_data (``dlpl-compact-data``): TFDS slices copied exactly, and
every bad argument, an unusable --out, a dataset that is not prepared and an unknown
split refused in one line with status 2 before any data is read or written."""

import json
import os

import numpy as np
import pytest

from dlpl_jax.data import compact as cd
from dlpl_jax.data import tfds
from dlpl_jax.tools import compact_data


def test_tfds_slices_round_trip_exactly(cifar_dir, tmp_path, capsys):
  path = str(tmp_path / "c.npz")
  assert compact_data.main(["--out", path, "--data_dir", cifar_dir,
                            "--splits", "train[:300],test[:200]"]) == 0
  out = capsys.readouterr().out  # progress: each split's coding starts and ends
  assert "coding train: 300 images" in out and "coded test in" in out
  assert "every split identical to the TFDS copy" in out
  back = cd.read(path)
  for split, n in (("train", 300), ("test", 200)):
    x, y = tfds.load_split("cifar10", f"{split}[:{n}]", cifar_dir)
    np.testing.assert_array_equal(back[split][0], x)
    np.testing.assert_array_equal(back[split][1], y)
  assert json.loads(np.load(path)["meta"].tobytes())["dataset"] == "cifar10"


def test_command_checks_arguments_before_reading(tmp_path, monkeypatch, one_error_line):
  """Bad arguments and an unusable --out are refused in one line with status 2 before
  any data is read (the coding takes minutes)."""
  def no_reading(*args):
    raise AssertionError(f"data read before the arguments were checked: {args}")
  monkeypatch.setattr(tfds, "load_split", no_reading)
  afile = tmp_path / "afile"
  afile.write_text("x")
  (tmp_path / "dir.npz").mkdir()
  cases = [(["--out", str(afile / "c.npz")], f"{afile} is a file, not a folder"),
           (["--out", str(tmp_path / "dir.npz")], "is a folder"),
           (["--out", str(tmp_path / "c.npz"), "--quality", "0"], "quality must be in"),
           (["--out", str(tmp_path / "c.npz"), "--splits", "train,,test"],
            "--splits must be comma-separated"),
           (["--out", str(tmp_path / "c.npz"), "--splits", "train[:10],train[10:]"],
            "names 'train' twice")]
  if os.geteuid() != 0:  # root writes into a read-only folder all the same
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    cases.append((["--out", str(ro / "c.npz")], "cannot write in"))
  for argv, match in cases:
    assert compact_data.main(argv) == 2, argv
    assert match in one_error_line(), argv
  with pytest.raises(SystemExit) as e:
    compact_data.main(["--out", str(tmp_path / "c.txt")])
  assert e.value.code == 2 and "--out must end in .npz" in one_error_line()
  assert sorted(os.listdir(tmp_path)) == ["afile", "dir.npz"] + (
      ["ro"] if os.geteuid() != 0 else [])


@pytest.mark.parametrize("argv, match", [
    (["--out", "x.npz", "--quality", "high"], "invalid int value"),
    ([], "the following arguments are required: --out"),
])
def test_argument_errors_are_one_line_with_status_2(one_error_line, argv, match):
  with pytest.raises(SystemExit) as e:
    compact_data.main(argv)
  assert e.value.code == 2
  line = one_error_line()
  assert match in line and "--help" in line


def test_dataset_not_prepared_is_one_line(tmp_path, one_error_line):
  assert compact_data.main(["--out", str(tmp_path / "c.npz"), "--dataset", "foo",
                            "--data_dir", str(tmp_path)]) == 2
  assert "TFDS dataset 'foo' is not prepared" in one_error_line()


def test_unknown_split_is_one_line(cifar_dir, tmp_path, one_error_line):
  assert compact_data.main(["--out", str(tmp_path / "c.npz"), "--data_dir", cifar_dir,
                            "--splits", "bogus"]) == 2
  assert "--splits 'bogus': Unknown split 'bogus'" in one_error_line()
  assert not os.listdir(tmp_path)
