"""dlpl_jax.compact_data: lossless round trips, damage detected, the loader's compact path
(same selection as TFDS, no TensorFlow imported)."""

import json
import os
import types

import numpy as np
import pytest

from dlpl_jax.data import compact as cd
from dlpl_jax.tools import compact_data
from dlpl_jax.data import in_memory as input_pipeline
from dlpl_jax.errors import UsageError
from tests.test_light_install import run_without_extras

FULL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                    "cifar10_compact.npz")


def _config(data_dir, **kw):
  c = dict(dataset="cifar10", num_classes=10, data_dir=data_dir, labels_per_class=4,
           labeled_seed=0, eval_examples=0, in_memory=True,
           lt=types.SimpleNamespace(enabled=False))
  c.update(kw)
  return types.SimpleNamespace(**c)


def _images(n, seed=0):
  """Smooth colour images (JPEG-like content) plus a few of pure noise."""
  d = input_pipeline.synthetic(labeled_per_class=1, unlabeled=n, test=1, seed=seed)
  x = d.x_u.copy()
  x[:3] = np.random.default_rng(seed).integers(0, 256, x[:3].shape, dtype=np.uint8)
  x[3] = 0
  x[4] = 255
  return x, d.y_u


def test_quality_50_is_the_standard_table():
  np.testing.assert_array_equal(cd.quant_tables(50)[0], cd._LUMA)  # pylint: disable=protected-access
  np.testing.assert_array_equal(cd.quant_tables(50)[1], cd._CHROMA)  # pylint: disable=protected-access
  assert cd.quant_tables(100).max() == 1
  with pytest.raises(UsageError, match="quality"):
    cd.quant_tables(0)


def test_round_trip_is_exact(tmp_path):
  x, y = _images(40)
  xt, yt = _images(16, seed=1)
  path = str(tmp_path / "c.npz")
  meta = cd.write(path, {"train": (x, y), "test": (xt, yt)}, "cifar10")
  back = cd.read(path)
  np.testing.assert_array_equal(back["train"][0], x)
  np.testing.assert_array_equal(back["test"][0], xt)
  np.testing.assert_array_equal(back["train"][1], y)
  assert back["test"][1].dtype == np.int32
  assert cd.read_meta(path)["splits"]["train"]["sha256"] == meta["splits"]["train"]["sha256"]


def test_prediction_is_close_on_smooth_images():
  """The integer JPEG decode of the coefficients is close to the smooth images it coded
  (the residual only corrects it)."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32] / 32
  a = rng.uniform(-1, 1, (20, 1, 1, 3, 3))
  x = 128 + 60 * (a[..., 0] * yy[..., None] + a[..., 1] * xx[..., None]
                  + a[..., 2] * np.sin(3 * xx + yy)[..., None])
  x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
  tables = cd.quant_tables(90)
  pred = cd.predict(*cd.coefficients(x, tables), tables)
  assert 35 < cd.psnr(pred, x)["worst"] < np.inf
  assert cd.psnr(x, x)["worst"] == np.inf


def test_bad_images_refused():
  with pytest.raises(UsageError, match="multiples of 16"):
    cd.encode(np.zeros((2, 24, 24, 3), np.uint8), cd.quant_tables(75))
  with pytest.raises(UsageError, match="uint8"):
    cd.encode(np.zeros((2, 32, 32, 3), np.float32), cd.quant_tables(75))


def test_damage_is_reported(tmp_path):
  x, y = _images(16)
  path = str(tmp_path / "c.npz")
  cd.write(path, {"train": (x, y), "test": (x, y)}, "cifar10")
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  # A residual that decodes, but to other pixels: the checksum catches it.
  import lzma  # pylint: disable=import-outside-toplevel
  res = bytearray(lzma.decompress(arrays["test_residual"].tobytes()))
  res[100] ^= 1
  arrays["test_residual"] = np.frombuffer(lzma.compress(bytes(res)), np.uint8)
  np.savez(path, **arrays)
  with pytest.raises(cd.CompactDataError, match="checksum mismatch"):
    cd.read(path)
  cd.read(path, ("train",))  # the other split is intact
  arrays["train_coef"] = arrays["train_coef"][:-50]  # truncated LZMA stream
  np.savez(path, **arrays)
  with pytest.raises(cd.CompactDataError, match="is damaged"):
    cd.read(path, ("train",))
  with pytest.raises(cd.CompactDataError, match="does not exist.*compact_data --out"):
    cd.read(str(tmp_path / "absent.npz"))
  np.savez(path, a=np.zeros(3))
  with pytest.raises(cd.CompactDataError, match="not a compact dataset"):
    cd.read(path)


def test_loader_reads_compact_and_refuses_mismatch(tmp_path):
  x, y = _images(200)
  path = str(tmp_path / "c.npz")
  cd.write(path, {"train": (x, y), "test": (x[:50], y[:50])}, "cifar10")
  got = input_pipeline.load(_config(path))
  want = input_pipeline.select(_config(path), x, y, x[:50], y[:50])
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(UsageError, match="holds 'cifar10'"):
    input_pipeline.load(_config(path, dataset="cifar100", num_classes=100))
  with pytest.raises(UsageError, match="in_memory"):
    input_pipeline.load(_config(path, in_memory=False))


def test_loader_needs_no_tensorflow(tmp_path):
  x, y = _images(100)
  path = str(tmp_path / "c.npz")
  cd.write(path, {"train": (x, y), "test": (x[:20], y[:20])}, "cifar10")
  out = run_without_extras(f"""
      import types
      from dlpl_jax.data import in_memory as input_pipeline
      c = types.SimpleNamespace(dataset="cifar10", num_classes=10, data_dir={path!r},
                                labels_per_class=4, labeled_seed=0, eval_examples=0,
                                in_memory=True, lt=types.SimpleNamespace(enabled=False))
      d = input_pipeline.load(c)
      bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow",
                                                          "tensorflow_datasets", "PIL")]
      assert not bad, bad
      print(d.x_l.shape, d.x_u.shape, d.x_test.shape)
      """)
  assert out.strip() == "(40, 32, 32, 3) (100, 32, 32, 3) (20, 32, 32, 3)"


def test_tfds_slices_round_trip_exactly(cifar_dir, tmp_path, capsys):
  from dlpl_jax.data import tfds as data_lib  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / "c.npz")
  assert compact_data.main(["--out", path, "--data_dir", cifar_dir,
                  "--splits", "train[:300],test[:200]"]) == 0
  out = capsys.readouterr().out  # progress: each split's coding starts and ends
  assert "coding train: 300 images" in out and "coded test in" in out
  back = cd.read(path)
  for split, n in (("train", 300), ("test", 200)):
    x, y = data_lib.load_split("cifar10", f"{split}[:{n}]", cifar_dir)
    np.testing.assert_array_equal(back[split][0], x)
    np.testing.assert_array_equal(back[split][1], y)
  assert json.loads(np.load(path)["meta"].tobytes())["dataset"] == "cifar10"


@pytest.mark.slow
def test_full_compact_copy_equals_tfds(cifar_dir):
  """data/cifar10_compact.npz (when made) holds CIFAR-10 exactly and selects the same
  labeled / unlabeled sets as the TFDS copy."""
  if not os.path.isfile(FULL):
    pytest.skip(f"{FULL} not made (python -m dlpl_jax.compact_data --out {FULL})")
  via_npz = input_pipeline.load(_config(FULL))
  via_tfds = input_pipeline.load(_config(cifar_dir))
  for a, b in zip(via_npz, via_tfds):
    np.testing.assert_array_equal(a, b)


def _one_error_line(capsys) -> str:
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("[dlpl_jax] error: "), captured.err
  return lines[0]


def test_command_checks_arguments_before_reading(tmp_path, capsys, monkeypatch):
  """Bad arguments and an unusable --out are refused in one line with status 2 before
  any data is read (the coding takes minutes)."""
  from dlpl_jax.data import tfds as data_lib  # pylint: disable=import-outside-toplevel

  def no_reading(*args):
    raise AssertionError(f"data read before the arguments were checked: {args}")
  monkeypatch.setattr(data_lib, "load_split", no_reading)
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
    assert match in _one_error_line(capsys), argv
  with pytest.raises(SystemExit) as e:
    compact_data.main(["--out", str(tmp_path / "c.txt")])
  assert e.value.code == 2 and "--out must end in .npz" in _one_error_line(capsys)
  assert sorted(os.listdir(tmp_path)) == ["afile", "dir.npz"] + (
      ["ro"] if os.geteuid() != 0 else [])


def test_dataset_not_prepared_is_one_line(tmp_path, capsys):
  assert compact_data.main(["--out", str(tmp_path / "c.npz"), "--dataset", "foo",
                  "--data_dir", str(tmp_path)]) == 2
  assert "TFDS dataset 'foo' is not prepared" in _one_error_line(capsys)


def test_unknown_split_is_one_line(cifar_dir, tmp_path, capsys):
  assert compact_data.main(["--out", str(tmp_path / "c.npz"), "--data_dir", cifar_dir,
                  "--splits", "bogus"]) == 2
  assert "--splits 'bogus': Unknown split 'bogus'" in _one_error_line(capsys)
  assert not os.listdir(tmp_path)


def test_garbage_file_and_failed_write(tmp_path):
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not an archive at all" * 10)
  with pytest.raises(cd.CompactDataError, match=r"is not a valid \.npz of arrays") as e:
    cd.read(str(garbage))
  assert "allow_pickle" not in str(e.value)
  npy = tmp_path / "array.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(cd.CompactDataError, match=r"a single \.npy array"):
    cd.read_meta(str(npy))
  # A write that fails at the rename leaves no temporary file behind.
  x, y = _images(16)
  target = tmp_path / "taken.npz"
  target.mkdir()
  with pytest.raises(IsADirectoryError):
    cd.write(str(target), {"train": (x, y)}, "cifar10", preset=0)
  assert sorted(os.listdir(tmp_path)) == ["array.npz", "garbage.npz", "taken.npz"]
