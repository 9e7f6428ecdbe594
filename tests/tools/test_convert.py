"""dlpl_jax.tools.convert (``dlpl-convert``), without PyTorch: a torchvision-layout
state dict written out independently in NumPy (tests/torchvision_reference.py) is
converted, every leaf is checked in place, and the Flax ResNet-50 with the converted
weights is compared with a NumPy forward pass of torch's arithmetic; the command checks
its --out before reading and refuses bad input in one line. The variables files
themselves are tested in tests/models/test_weights.py."""

import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax.tools import convert
from dlpl_jax import models
from dlpl_jax.models import weights
from tests import torchvision_reference as tv

TORCHVISION_RESNET50_PARAMS = 25_557_032  # sum(p.numel()) of torchvision resnet50()


@pytest.fixture(scope="module")
def sd():
  return tv.state_dict(num_classes=10, seed=0)


def _images(batch=2, size=32, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3),
                                              dtype=np.uint8)


def _model_shapes(num_classes=10):
  model = models.create_model("resnet50", num_classes)
  x = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _flax_path(torch_key):
  """Independent reading of a torch key: (collection, path...)."""
  parts = torch_key.split(".")
  leaf = parts[-1]
  mods, i = [], 0
  body = parts[:-1]
  while i < len(body):
    if body[i].startswith("layer") or body[i] == "downsample":
      mods.append(f"{body[i]}_{body[i + 1]}")
      i += 2
    else:
      mods.append(body[i])
      i += 1
  if mods == ["fc"]:
    mods = ["classifier"]
  is_conv_or_fc = "conv" in mods[-1] or mods[-1] in ("downsample_0", "classifier")
  if leaf == "weight":
    return ("params", *mods, "kernel" if is_conv_or_fc else "scale")
  return {"bias": ("params", *mods, "bias"),
          "running_mean": ("batch_stats", *mods, "mean"),
          "running_var": ("batch_stats", *mods, "var")}[leaf]


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def test_reference_state_dict_is_torchvision_sized():
  assert tv.num_parameters(tv.state_dict(1000)) == TORCHVISION_RESNET50_PARAMS


def test_every_leaf_lands_in_place(sd):
  conv = convert.convert_state_dict(sd)
  assert conv.prefix == ""
  n_leaves = 0
  for key, value in sd.items():
    if key.endswith("num_batches_tracked"):
      continue
    got = np.asarray(_get(conv.variables, _flax_path(key)))
    if value.ndim == 4:
      want = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif value.ndim == 2:
      want = value.T  # (out, in) -> (in, out)
    else:
      want = value
    np.testing.assert_array_equal(got, want, err_msg=key)
    n_leaves += 1
  # ... and nothing else: the converted tree has exactly the model's leaves.
  assert n_leaves == len(jax.tree_util.tree_leaves(conv.variables))
  assert weights.check_variables(conv.variables, _model_shapes(10)) == []
  assert models.param_count(conv.variables["params"]) == tv.num_parameters(sd)


def test_round_trip(sd):
  back = convert.to_state_dict(convert.convert_state_dict(sd).variables)
  want = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  assert sorted(back) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(back[k], want[k], err_msg=k)


def test_stem_equals_numpy_reference(sd):
  """Normalise + conv 7x7/2 (pad 3) + BN + ReLU against NumPy, even and odd sizes."""
  # Running variances near eps, so that BatchNorm's epsilon (1e-5) shows.
  sd = dict(sd, **{"bn1.running_var": np.random.default_rng(5).uniform(
      1e-5, 1e-4, 64).astype(np.float32)})
  variables = convert.convert_state_dict(sd).variables
  model = models.create_model("resnet50", 10)
  for size in (20, 23):
    x = _images(2, size)
    _, state = jax.jit(lambda v, x: model.apply(
        v, x, train=False, capture_intermediates=lambda m, _: m.name == "bn1",
        mutable=["intermediates"]))(variables, x)
    got = np.maximum(np.asarray(state["intermediates"]["bn1"]["__call__"][0]), 0)
    ref = tv.normalize(x)
    ref = np.maximum(tv.batch_norm(tv.conv2d(ref, sd["conv1.weight"], 2, 3), sd, "bn1"), 0)
    want = ref.transpose(0, 2, 3, 1)
    assert got.shape == want.shape == (2, (size + 1) // 2, (size + 1) // 2, 64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # A transposed kernel (HW swapped) would not pass: the check sees the layout.
    wrong = tv.conv2d(tv.normalize(x), sd["conv1.weight"].transpose(0, 1, 3, 2), 2, 3)
    wrong = np.maximum(tv.batch_norm(wrong, sd, "bn1"), 0).transpose(0, 2, 3, 1)
    assert np.abs(wrong - want).max() > 1e-2


def test_logits_equal_numpy_reference(sd):
  """The whole eval-mode network: layout, padding of the stride-2 convs, BN eps."""
  variables = convert.convert_state_dict(sd).variables
  model = models.create_model("resnet50", 10)
  x = _images(2, 40)
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                   return_features=True))(variables, x)
  want_logits, want_feats = tv.forward(x, sd)
  scale = np.abs(want_feats).max()
  np.testing.assert_allclose(np.asarray(feats), want_feats, atol=1e-4 * scale)
  np.testing.assert_allclose(np.asarray(logits), want_logits,
                             atol=1e-4 * np.abs(want_logits).max())
  # The check has teeth: "SAME" padding on the strided convs reads other pixels.
  assert np.abs(want_logits[0] - want_logits[1]).max() > 1e-2


def _moco(sd):
  """A MoCo(-EMAN) checkpoint: module.encoder_q / encoder_k, MLP head, queue."""
  mlp = tv.state_dict(seed=3, head="mlp")
  out = {}
  for k, v in sd.items():
    if not k.startswith("fc."):
      out[f"module.encoder_q.{k}"] = v
      out[f"module.encoder_k.{k}"] = v + 1
  for k in ("fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"):
    out[f"module.encoder_q.{k}"] = mlp[k]
    out[f"module.encoder_k.{k}"] = mlp[k]
  out["module.queue"] = np.zeros((128, 16), np.float32)
  out["module.queue_ptr"] = np.zeros((1,), np.int64)
  return out


def test_moco_checkpoint_backbone_only(sd):
  conv = convert.convert_state_dict(_moco(sd))
  assert conv.prefix == "encoder_q."
  assert "classifier" not in conv.variables["params"]
  notes = " | ".join(conv.notes)
  assert "projection head ignored" in notes and "fc.0.weight" in notes
  assert "outside the prefix 'encoder_q.' ignored" in notes and "encoder_k" in notes
  np.testing.assert_array_equal(  # the query encoder, not the key encoder (+1)
      conv.variables["params"]["layer3_2"]["conv2"]["kernel"],
      sd["layer3.2.conv2.weight"].transpose(2, 3, 1, 0))
  # The classifier keeps the model's init; everything else comes from the file.
  reference = {"params": {"classifier": {"kernel": jnp.ones((2048, 10)),
                                         "bias": jnp.zeros(10)}}}
  shapes = _model_shapes(10)
  assert weights.check_variables(conv.variables, shapes) == [
      "params/classifier/bias", "params/classifier/kernel"]
  full = jax.tree.map(lambda s: jnp.full(s.shape, 7.0, s.dtype), shapes)
  full["params"]["classifier"] = reference["params"]["classifier"]
  merged = weights.init_variables(full, conv.variables)
  np.testing.assert_array_equal(merged["params"]["classifier"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged["batch_stats"]["bn1"]["var"],
                                sd["bn1.running_var"])


def test_debiaspl_checkpoint_prefix(sd):
  """The official code's FixMatch wrapper: module.main.backbone.*, module.main.fc.*."""
  ckpt = {}
  for k, v in sd.items():
    top = "main.fc." if k.startswith("fc.") else "main.backbone."
    name = k[3:] if k.startswith("fc.") else k
    ckpt[f"module.{top}{name}"] = v
    ckpt[f"module.{top.replace('main', 'ema')}{name}"] = v * 0
  conv = convert.convert_state_dict(ckpt)
  assert conv.prefix == "main.backbone."
  np.testing.assert_array_equal(conv.variables["params"]["classifier"]["kernel"],
                                sd["fc.weight"].T)
  np.testing.assert_array_equal(conv.variables["params"]["bn1"]["scale"],
                                sd["bn1.weight"])
  # ... and the EMA teacher on request.
  ema = convert.convert_state_dict(ckpt, prefix="ema.backbone.")
  np.testing.assert_array_equal(ema.variables["params"]["bn1"]["scale"], 0.0)
  ema = convert.convert_state_dict(ckpt, prefix="module.ema.backbone.")
  np.testing.assert_array_equal(ema.variables["params"]["bn1"]["scale"], 0.0)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("layer3.2.bn2.running_var"), "missing key 'layer3.2.bn2.running_var'"),
    (lambda d: d.update({"layer2.0.conv2.weight": np.zeros((128, 128, 1, 1),
                                                           np.float32)}),
     r"layer2.0.conv2.weight: shape \(128, 128, 1, 1\).*\(128, 128, 3, 3\)"),
    (lambda d: d.update({"layer5.0.conv1.weight": np.zeros(1, np.float32)}),
     "unexpected key 'layer5.0.conv1.weight'"),
    (lambda d: d["layer1.0.bn1.weight"].__setitem__(3, np.nan),
     "layer1.0.bn1.weight: holds non-finite"),
    (lambda d: d.update({"fc.weight": np.zeros((10, 512), np.float32)}),
     r"fc.weight: shape \(10, 512\)"),
    (lambda d: d["layer2.0.bn1.running_var"].__setitem__(5, -0.5),
     r"layer2.0.bn1.running_var: a negative running variance \(-0.5 at index 5"),
    (lambda d: d.update({"conv1.weight": np.full((64, 3, 7, 7), 1e39)}),
     "conv1.weight: holds values beyond float32's range"),
])
def test_bad_state_dicts_name_the_key(sd, edit, match):
  bad = {k: v.copy() for k, v in sd.items()}
  edit(bad)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no RuntimeWarning line beside the error's line
    with pytest.raises(convert.ConversionError, match=match):
      convert.convert_state_dict(bad)


def test_no_stem_found():
  with pytest.raises(convert.ConversionError, match="no ResNet stem found"):
    convert.convert_state_dict({"module.encoder.weight": np.zeros(3)})


def test_class_count_mismatch_and_drop_fc():
  sd1000 = tv.state_dict(num_classes=1000, seed=2)
  conv = convert.convert_state_dict(sd1000)
  with pytest.raises(weights.WeightsError,
                     match=r"params/classifier/bias: shape \(1000,\).*\(10,\).*drop_fc"):
    weights.check_variables(conv.variables, _model_shapes(10))
  assert weights.check_variables(weights.drop_classifier(conv.variables),
                                 _model_shapes(10)) != []
  dropped = convert.convert_state_dict(sd1000, drop_fc=True)
  assert "classifier" not in dropped.variables["params"]


def test_command_writes_what_load_variables_reads(sd, tmp_path, capsys):
  npz = tmp_path / "ckpt.npz"
  np.savez(npz, **{f"module.encoder_q.{k}": v for k, v in sd.items()})
  out = tmp_path / "resnet50_init.msgpack"
  assert convert.main(["--pth", str(npz), "--out", str(out)]) == 0
  loaded = weights.load_variables(str(out))
  want = convert.convert_state_dict(sd).variables
  jax.tree.map(np.testing.assert_array_equal, loaded, want)
  out_text = capsys.readouterr().out
  assert (f"converted {npz} (prefix 'encoder_q.'): {tv.num_parameters(sd):,} "
          "parameters") in out_text
  assert "\n  fc converted to the classifier: 10 classes\n" in out_text  # a note a line
  # --drop_fc and --prefix reach the conversion.
  ema = {**{f"module.encoder_q.{k}": v for k, v in sd.items()},
         **{f"module.encoder_k.{k}": v * 0 for k, v in sd.items()}}
  np.savez(npz, **ema)
  assert convert.main(["--pth", str(npz), "--out", str(out), "--prefix", "encoder_k.",
                       "--drop_fc"]) == 0
  loaded = weights.load_variables(str(out))
  assert "classifier" not in loaded["params"]
  np.testing.assert_array_equal(loaded["params"]["bn1"]["scale"], 0.0)


def test_pth_without_torch_is_one_line(tmp_path, monkeypatch, one_error_line):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, installed or not
  pth = tmp_path / "m.pth"
  pth.write_bytes(b"\0")
  assert convert.main(["--pth", str(pth), "--out", str(tmp_path / "o.msgpack")]) == 2
  assert "needs PyTorch" in one_error_line()
  assert sorted(os.listdir(tmp_path)) == ["m.pth"]


def test_command_checks_out_first(tmp_path, one_error_line):
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"\x93 not an npz archive" * 20)
  outdir = tmp_path / "outdir"
  outdir.mkdir()
  # --out checked before the checkpoint is read: its error, not the checkpoint's.
  assert convert.main(["--pth", str(junk), "--out", str(outdir)]) == 2
  assert f"--out {outdir} is a folder" in one_error_line()
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert convert.main(["--pth", str(junk), "--out", str(afile / "x.msgpack")]) == 2
  assert f"{afile} is a file, not a folder" in one_error_line()
  if os.geteuid() != 0:  # root writes into a read-only folder all the same
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert convert.main(["--pth", str(junk), "--out", str(ro / "x.msgpack")]) == 2
    assert "cannot write in" in one_error_line()
  # A garbage .npz: named as such, without numpy's hint to allow pickle.
  assert convert.main(["--pth", str(junk), "--out", str(tmp_path / "x.msgpack")]) == 2
  line = one_error_line()
  assert f"{junk} is not a valid .npz of arrays" in line and "pickle" not in line
  assert sorted(os.listdir(tmp_path)) == ["afile", "junk.npz", "outdir"] + (
      ["ro"] if os.geteuid() != 0 else [])
  # No checkpoint at all.
  assert convert.main(["--pth", str(tmp_path / "absent.npz"), "--out",
                       str(tmp_path / "x.msgpack")]) == 2
  assert "no checkpoint at" in one_error_line()


@pytest.mark.parametrize("argv, match", [
    (["--pth", "x.npz"], "the following arguments are required: --out"),
    ([], "the following arguments are required: --pth, --out"),
])
def test_argument_errors_are_one_line_with_status_2(one_error_line, argv, match):
  with pytest.raises(SystemExit) as e:
    convert.main(argv)
  assert e.value.code == 2
  line = one_error_line()
  assert match in line and "--help" in line
