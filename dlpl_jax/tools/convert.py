"""PyTorch ResNet-50 checkpoints (torchvision layout) to Flax variables, and back.

For initialising :class:`dlpl_jax.models.ResNet50` from a self-supervised checkpoint
(MoCo, MoCo-EMAN) or from any torchvision-layout ResNet-50. The command::

  dlpl-convert --pth res50_moco_eman_800ep.pth.tar \\
      --out resnet50_init.msgpack [--prefix PREFIX] [--drop_fc] [--trust_pickle]

reads the checkpoint (PyTorch is needed for a ``.pth``/``.pth.tar`` only and is
imported then; an ``.npz`` of the state dict's arrays, keyed by torch names, needs
no PyTorch), converts it, prints what was taken and what was left, and writes
``--out`` with ``flax.serialization.msgpack_serialize`` of
``{"params": ..., "batch_stats": ...}`` (nested dicts of float32 arrays, the
structure of ``ResNet50().init(...)``). To use it::

  from dlpl_jax.models import weights
  loaded = weights.load_variables("resnet50_init.msgpack")
  variables = weights.init_variables(model.init(key, x, train=False), loaded)

``init_variables`` checks every shape against the model's (naming the first
mismatch) and keeps the model's own initialisation where the file has nothing (the
classifier, when the checkpoint had no ``fc``).

The mapping (torch name -> Flax path; torch names with ``.`` inside a module
written ``_`` in Flax):

==================================  ========================================
torch                               Flax
==================================  ========================================
``conv1.weight`` [O, I, kh, kw]     ``params/conv1/kernel`` [kh, kw, I, O]
``bn1.weight`` / ``bn1.bias``       ``params/bn1/scale`` / ``params/bn1/bias``
``bn1.running_mean`` / ``_var``     ``batch_stats/bn1/mean`` / ``var``
``bn1.num_batches_tracked``         consumed, not stored (Flax has no counter)
``layer2.0.conv2.weight``           ``params/layer2_0/conv2/kernel``
``layer2.0.downsample.0.weight``    ``params/layer2_0/downsample_0/kernel``
``layer2.0.downsample.1.*``         ``.../layer2_0/downsample_1/...``
``fc.weight`` [C, 2048]             ``params/classifier/kernel`` [2048, C]
``fc.bias`` [C]                     ``params/classifier/bias``
==================================  ========================================

Prefixes. A checkpoint's keys often carry a wrapper's prefix. The rule, in order:

1. If the file holds a dict with a ``state_dict`` (or ``model``) entry, that is the
   state dict; otherwise the file is the state dict.
2. A leading ``module.`` (DataParallel / DistributedDataParallel) is removed from
   every key.
3. The backbone prefix is ``--prefix`` when given (a leading ``module.`` in it is
   dropped as well), else the first of
   :data:`PREFIXES` (``encoder_q.`` of MoCo, ``main.backbone.`` of the DebiasPL
   code, ``encoder.``, ``backbone.``, ``model.``, none) for which
   ``<prefix>conv1.weight`` exists. Keys under it are the network; keys outside it
   (MoCo's key encoder ``encoder_k.*`` and ``queue``, an EMA copy, ...) are ignored
   and reported (counted, the first few named).
4. The classifier is ``<prefix>fc.weight`` / ``<prefix>fc.bias`` (for
   ``main.backbone.``: ``main.fc.*``).

The head. A plain linear ``fc`` ([C, 2048] and [C]) is converted to the
``classifier`` (then the model must have C classes; ``--drop_fc`` leaves it out). A
projection head (MoCo's MLP, ``fc.0.weight``, ``fc.2.weight``, ...) is ignored and
reported, and so is a missing ``fc``: the classifier then keeps the model's
initialisation (as the official DebiasPL code does, which loads the MoCo encoder
without its ``fc``).

Every key under the prefix is converted, ignored with a note, or refused: an
unknown key, a missing key, a wrong shape, a non-finite value (or one beyond float32's
range) or a negative BatchNorm running variance stops the conversion with one
:class:`ConversionError` naming the key. The command checks ``--out`` before it reads
the checkpoint, and writes it through a temporary file that never stays behind.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from dlpl_jax import errors
from dlpl_jax.data import npz
from dlpl_jax.errors import UsageError
from dlpl_jax.models import weights

STAGE_SIZES = (3, 4, 6, 3)
FEATURES = 2048
# Backbone prefixes tried in order (after a leading "module." is removed).
PREFIXES = ("encoder_q.", "main.backbone.", "encoder.", "backbone.", "model.", "")
# Where the classifier lives when it is not at "<prefix>fc.".
_HEAD_PREFIX = {"main.backbone.": "main."}
_BN_KEYS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"),
            "running_var": ("batch_stats", "var")}


class ConversionError(weights.WeightsError):
  """A PyTorch checkpoint that does not convert to the model (one line)."""


class Layer(NamedTuple):
  """One torch module of the ResNet-50: its name, Flax path, kind and shape.

  ``shape`` is the torch weight shape: ``(O, I, kh, kw)`` for a conv, ``(C,)`` for
  a BatchNorm.
  """
  torch_name: str
  flax_path: tuple[str, ...]
  kind: str  # "conv" | "bn"
  shape: tuple[int, ...]


def layers(stage_sizes=STAGE_SIZES) -> list[Layer]:
  """The convolutions and BatchNorms of a torchvision ResNet (bottleneck, v1.5), fc
  excluded, in torch's order."""
  out = [Layer("conv1", ("conv1",), "conv", (64, 3, 7, 7)),
         Layer("bn1", ("bn1",), "bn", (64,))]
  inplanes = 64
  for s, blocks in enumerate(stage_sizes):
    planes = 64 * 2 ** s
    for b in range(blocks):
      t, f = f"layer{s + 1}.{b}", f"layer{s + 1}_{b}"
      out += [Layer(f"{t}.conv1", (f, "conv1"), "conv", (planes, inplanes, 1, 1)),
              Layer(f"{t}.bn1", (f, "bn1"), "bn", (planes,)),
              Layer(f"{t}.conv2", (f, "conv2"), "conv", (planes, planes, 3, 3)),
              Layer(f"{t}.bn2", (f, "bn2"), "bn", (planes,)),
              Layer(f"{t}.conv3", (f, "conv3"), "conv", (4 * planes, planes, 1, 1)),
              Layer(f"{t}.bn3", (f, "bn3"), "bn", (4 * planes,))]
      if b == 0:
        out += [Layer(f"{t}.downsample.0", (f, "downsample_0"), "conv",
                      (4 * planes, inplanes, 1, 1)),
                Layer(f"{t}.downsample.1", (f, "downsample_1"), "bn", (4 * planes,))]
      inplanes = 4 * planes
  return out


class Conversion(NamedTuple):
  """What :func:`convert_state_dict` returns.

  Attributes:
    variables: ``{"params": ..., "batch_stats": ...}`` nested dicts of float32
      numpy arrays in :class:`dlpl_jax.models.ResNet50`'s structure (without
      ``params/classifier`` when the checkpoint had no plain ``fc``).
    prefix: the backbone prefix that was used (after ``module.`` was removed).
    notes: one line for each group of keys that was ignored, and for the head.
  """
  variables: dict
  prefix: str
  notes: list[str]


def _names(keys, limit=3) -> str:
  keys = sorted(keys)
  shown = ", ".join(keys[:limit])
  return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")


def strip_prefix(state_dict: Mapping[str, Any],
                 prefix: str | None = None) -> tuple[dict, str, list[str]]:
  """Applies steps 2-3 of the module's prefix rule.

  Args:
    state_dict: torch names to arrays.
    prefix: the backbone prefix (after ``module.`` is removed); None picks the first
      of :data:`PREFIXES` that has ``<prefix>conv1.weight``.

  Returns:
    ``(backbone, prefix, outside)``: the keys under ``prefix`` with it removed (plus
    the head keys, at ``fc.*``), the prefix used, and the original keys outside it.

  Raises:
    ConversionError: no candidate prefix has ``conv1.weight``.
  """
  plain = {}
  for k, v in state_dict.items():
    plain[k[len("module."):] if k.startswith("module.") else k] = (k, v)
  if prefix is not None and prefix.startswith("module."):
    prefix = prefix[len("module."):]
  if prefix is None:
    prefix = next((p for p in PREFIXES if f"{p}conv1.weight" in plain), None)
    if prefix is None:
      raise ConversionError(
          "no ResNet stem found: none of "
          f"{', '.join(repr(p + 'conv1.weight') for p in PREFIXES)} is a key "
          f"(after removing 'module.'); keys start {_names(plain)}; pass --prefix")
  elif f"{prefix}conv1.weight" not in plain:
    raise ConversionError(
        f"prefix {prefix!r}: missing key {prefix + 'conv1.weight'!r} "
        f"(keys start {_names(plain)})")
  head = _HEAD_PREFIX.get(prefix, prefix) + "fc."
  backbone, outside = {}, []
  for k, (orig, v) in plain.items():
    if k.startswith(head):
      backbone["fc." + k[len(head):]] = v
    elif k.startswith(prefix):
      backbone[k[len(prefix):]] = v
    else:
      outside.append(orig)
  return backbone, prefix, outside


def _array(key: str, value, shape: tuple[int, ...]) -> np.ndarray:
  a = np.asarray(value)
  if a.shape != tuple(shape):
    raise ConversionError(
        f"{key}: shape {a.shape} in the checkpoint, {tuple(shape)} expected for a "
        "torchvision ResNet-50")
  if not np.issubdtype(a.dtype, np.floating):
    raise ConversionError(f"{key}: dtype {a.dtype}, a floating point array expected")
  if not np.all(np.isfinite(a)):
    raise ConversionError(f"{key}: holds non-finite values (NaN or inf)")
  with np.errstate(over="ignore"):
    a = a.astype(np.float32)
  if not np.all(np.isfinite(a)):
    raise ConversionError(f"{key}: holds values beyond float32's range (|x| > "
                          f"{np.finfo(np.float32).max:.3g})")
  if key.endswith(".running_var") and (a < 0).any():
    i = int(np.argmax(a < 0))
    raise ConversionError(f"{key}: a negative running variance ({a[i]:g} at index {i}; "
                          f"{int((a < 0).sum())} such); not a trained BatchNorm")
  return a


def _put(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def convert_state_dict(state_dict: Mapping[str, Any], prefix: str | None = None,
                       drop_fc: bool = False,
                       stage_sizes=STAGE_SIZES) -> Conversion:
  """A torch ResNet-50 state dict (numpy arrays by torch name) to Flax variables.

  Conv weights ``[O, I, kh, kw]`` become kernels ``[kh, kw, I, O]``; the linear
  ``fc.weight`` ``[C, 2048]`` becomes ``classifier/kernel`` ``[2048, C]``;
  BatchNorm weight/bias go to ``params`` (scale/bias), running mean/var to
  ``batch_stats``; ``num_batches_tracked`` is consumed. See the module docstring
  for the prefix rule and the head.

  Args:
    state_dict: torch names to arrays (numpy, or anything ``np.asarray`` takes).
    prefix: the backbone prefix; None picks it by the module's rule.
    drop_fc: leave a plain ``fc`` out (the classifier keeps the model's init).
    stage_sizes: blocks per stage ((3, 4, 6, 3) for ResNet-50).

  Returns:
    A :class:`Conversion` ``(variables, prefix, notes)``.

  Raises:
    ConversionError: a missing or unknown key, a wrong shape or dtype, a
      non-finite value or one beyond float32's range, a negative running variance
      (the message names the key).
  """
  backbone, prefix, outside = strip_prefix(state_dict, prefix)
  variables: dict = {"params": {}, "batch_stats": {}}
  consumed: set[str] = set()
  notes: list[str] = []
  for layer in layers(stage_sizes):
    if layer.kind == "conv":
      key = f"{layer.torch_name}.weight"
      if key not in backbone:
        raise ConversionError(f"missing key {key!r} (looked for {prefix + key!r})")
      w = _array(key, backbone[key], layer.shape)
      _put(variables["params"], layer.flax_path + ("kernel",),
           np.ascontiguousarray(w.transpose(2, 3, 1, 0)))
      consumed.add(key)
    else:
      for tkey, (collection, name) in _BN_KEYS.items():
        key = f"{layer.torch_name}.{tkey}"
        if key not in backbone:
          raise ConversionError(f"missing key {key!r} (looked for {prefix + key!r})")
        _put(variables[collection], layer.flax_path + (name,),
             _array(key, backbone[key], layer.shape))
        consumed.add(key)
      consumed.add(f"{layer.torch_name}.num_batches_tracked")  # absent is fine too
  head = {k: v for k, v in backbone.items() if k.startswith("fc.")}
  consumed.update(head)
  if set(head) == {"fc.weight", "fc.bias"}:
    w = np.asarray(head["fc.weight"])
    c = w.shape[0] if w.ndim == 2 else -1
    w = _array("fc.weight", w, (c, FEATURES))
    b = _array("fc.bias", head["fc.bias"], (c,))
    if drop_fc:
      notes.append(f"fc ({c} classes) left out as asked: the classifier keeps the "
                   "model's initialisation")
    else:
      variables["params"]["classifier"] = {"kernel": np.ascontiguousarray(w.T),
                                           "bias": b}
      notes.append(f"fc converted to the classifier: {c} classes")
  elif head:
    notes.append(f"projection head ignored ({_names(head)}): the classifier keeps "
                 "the model's initialisation")
  else:
    notes.append("no fc in the checkpoint: the classifier keeps the model's "
                 "initialisation")
  unknown = sorted(set(backbone) - consumed)
  if unknown:
    raise ConversionError(
        f"unexpected key {prefix + unknown[0]!r} under prefix {prefix!r}: not part of a "
        f"torchvision ResNet-50 ({len(unknown)} such key(s))")
  if outside:
    notes.append(f"{len(outside)} key(s) outside the prefix {prefix!r} ignored: "
                 f"{_names(outside)}")
  return Conversion(variables, prefix, notes)


def to_state_dict(variables: Mapping[str, Any],
                  stage_sizes=STAGE_SIZES) -> dict[str, np.ndarray]:
  """The inverse of :func:`convert_state_dict`: Flax variables to torch names.

  ``num_batches_tracked`` is not stored in Flax and is not produced. The classifier
  becomes ``fc.weight`` ``[C, 2048]`` / ``fc.bias`` when present.
  """
  params, stats = variables["params"], variables["batch_stats"]

  def get(tree, path):
    for p in path:
      tree = tree[p]
    return np.asarray(tree)

  out = {}
  for layer in layers(stage_sizes):
    if layer.kind == "conv":
      out[f"{layer.torch_name}.weight"] = get(
          params, layer.flax_path + ("kernel",)).transpose(3, 2, 0, 1)
    else:
      for tkey, (collection, name) in _BN_KEYS.items():
        tree = params if collection == "params" else stats
        out[f"{layer.torch_name}.{tkey}"] = get(tree, layer.flax_path + (name,))
  if "classifier" in params:
    out["fc.weight"] = get(params, ("classifier", "kernel")).T
    out["fc.bias"] = get(params, ("classifier", "bias"))
  return out














def read_checkpoint(path: str, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays from a ``.pth``/``.pth.tar`` (PyTorch) or ``.npz``.

  PyTorch is imported only for a ``.pth``; it loads with ``weights_only=True``
  unless ``trust_pickle`` (full pickle: only for files you trust).

  Raises:
    ConversionError: the file is missing or unreadable, PyTorch is absent, or the
      file holds no state dict.
  """
  if not os.path.isfile(path):
    raise ConversionError(f"no checkpoint at {path}")
  if path.endswith(".npz"):
    try:
      return npz.read_npz(path)
    except UsageError as e:
      raise ConversionError(str(e)) from None
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError(
        "reading a .pth checkpoint needs PyTorch (pip install torch, the CPU build "
        "is enough), or save its state dict as .npz of numpy arrays") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # pylint: disable=broad-except
    hint = "" if trust_pickle else " (if you trust the file, retry with --trust_pickle)"
    raise ConversionError(f"cannot load {path}: {str(e).splitlines()[0]}{hint}") from None
  if isinstance(obj, Mapping):
    for key in ("state_dict", "model"):
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise ConversionError(f"{path}: no state dict found (a dict of tensors, or one "
                          "under 'state_dict' or 'model')")
  out = {}
  for k, v in obj.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu()
      out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def main(argv=None) -> int:
  parser = errors.ArgumentParser(
      prog="dlpl-convert",
      description="Convert a torchvision-layout ResNet-50 checkpoint (MoCo, "
      "MoCo-EMAN, torchvision) into Flax variables for dlpl_jax's resnet50.")
  parser.add_argument("--pth", required=True,
                      help=".pth/.pth.tar (needs PyTorch) or .npz of the state dict")
  parser.add_argument("--out", required=True, help="output .msgpack")
  parser.add_argument("--prefix", default=None,
                      help="backbone key prefix after 'module.' (default: "
                      f"first of {', '.join(repr(p) for p in PREFIXES)} that fits)")
  parser.add_argument("--drop_fc", action="store_true",
                      help="leave a linear fc out (the classifier keeps its init)")
  parser.add_argument("--trust_pickle", action="store_true",
                      help="load the .pth with full pickle (weights_only=False)")
  args = parser.parse_args(argv)

  def command():
    errors.check_output(args.out, "--out")  # before reading a large checkpoint
    state_dict = read_checkpoint(args.pth, args.trust_pickle)
    conv = convert_state_dict(state_dict, args.prefix, args.drop_fc)
    from dlpl_jax import models  # pylint: disable=import-outside-toplevel
    n = models.param_count(conv.variables["params"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    weights.save_variables(conv.variables, args.out)
    print(f"converted {args.pth} (prefix {conv.prefix!r}): {n:,} parameters -> "
          f"{args.out}")
    for note in conv.notes:
      print(f"  {note}")

  return errors.run_command(command, paths=(args.pth, args.out))


if __name__ == "__main__":
  sys.exit(main())
