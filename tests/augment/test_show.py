"""Tests for dlpl_jax.augment.show, ``python -m dlpl_jax.augment --show``: its argument
checks, the one error line when CIFAR-10 is not there, and the PNG grid it writes of
real CIFAR-10 test images (16 of them, the batch size of tests/augment/test_views.py,
whose compiled views it reuses when run in the same process)."""

import numpy as np
import pytest
from PIL import Image

from dlpl_jax.augment import show as show_lib


@pytest.mark.parametrize("args, message", [
    (["--show", "--n", "-3"], "--n must be in [1, 64]"),
    (["--show", "--out", "views"], "--out must be a .png path"),
])
def test_show_command_refuses_bad_arguments(args, message, capsys):
  with pytest.raises(SystemExit) as e:
    show_lib.main(args)
  assert e.value.code == 2 and message in capsys.readouterr().err


def test_show_without_cifar10_is_one_error_line(tmp_path, one_error_line):
  pytest.importorskip("tensorflow_datasets")
  out = tmp_path / "views.png"
  with pytest.raises(SystemExit) as e:
    show_lib.main(["--show", "--data_dir", str(tmp_path / "empty"), "--out", str(out)])
  assert e.value.code == 2
  assert "cifar10 is not prepared under" in one_error_line()
  assert not out.exists()


def test_show_writes_png(cifar_dir, tmp_path, capsys):
  out = tmp_path / "grid" / "views.png"  # the parent folder is created
  show_lib.main(["--show", "--n", "16", "--data_dir", cifar_dir, "--out", str(out)])
  assert f"wrote {out}" in capsys.readouterr().out
  arr = np.asarray(Image.open(out).convert("RGB"))
  # 5 rows (original, weak, 3 strong) of 16 real images.
  assert arr.shape[0] > 200 and arr.shape[1] > 500 and arr.std() > 20
