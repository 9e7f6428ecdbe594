"""Model variables files: ``{"params": ..., "batch_stats": ...}`` written, read, checked
against a model and merged into its fresh initialisation.

Two forms: ``flax.serialization.msgpack_serialize`` of the variables (what
``dlpl-convert`` writes from a PyTorch checkpoint, :func:`save_variables` /
:func:`load_variables`), or an ``.npz`` with one array per leaf keyed by its
``/``-joined path (``params/conv0/kernel``). The trainer's ``init_checkpoint`` reads
either (:func:`load_variables_file`) and :func:`init_variables` puts it into the model's
own initialisation, shapes checked; only the classifier may be absent (a
self-supervised checkpoint has none) and keeps its random init.
"""

from __future__ import annotations

from collections.abc import Mapping
import contextlib
import os
from typing import Any

import numpy as np

from dlpl_jax.data import npz
from dlpl_jax.errors import UsageError


class WeightsError(UsageError):
  """A variables file that cannot be read or does not fit the model (one line)."""


def drop_classifier(variables: Mapping[str, Any]) -> dict:
  """A copy of ``variables`` without ``params/classifier`` (for a model whose class
  count differs from the checkpoint's)."""
  params = {k: v for k, v in variables["params"].items() if k != "classifier"}
  return {**variables, "params": params}


def save_variables(variables: Mapping[str, Any], path: str) -> None:
  """Writes ``variables`` as ``flax.serialization.msgpack_serialize`` bytes, through
  ``path.tmp`` renamed when complete (removed if the write or the rename fails)."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  data = serialization.msgpack_serialize(
      {k: dict(v) for k, v in variables.items()})
  tmp = f"{path}.tmp"
  f = open(tmp, "wb")  # pylint: disable=consider-using-with
  try:
    with f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)  # a failed write or rename leaves no partial file behind
    raise


def load_variables(path: str) -> dict:
  """Reads a file written by :func:`save_variables` (or the command).

  Returns:
    ``{"params": ..., "batch_stats": ...}`` nested dicts of numpy arrays.

  Raises:
    WeightsError: the file is missing, unreadable or not of that form.
  """
  from flax import serialization  # pylint: disable=import-outside-toplevel
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None
  try:
    variables = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(
        f"{path} is not a flax msgpack file ({type(e).__name__}); write it with "
        "dlpl-convert") from None
  if not isinstance(variables, dict) or "params" not in variables:
    raise WeightsError(f"{path}: no 'params' collection; not a converted model")
  variables.setdefault("batch_stats", {})
  return variables


def _flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def check_variables(loaded: Mapping[str, Any], reference: Mapping[str, Any],
                    missing_ok=(("params", "classifier"),)) -> list[str]:
  """Checks loaded variables against a model's (e.g. ``model.init(...)`` or its
  ``jax.eval_shape``), naming the first mismatch.

  Args:
    loaded: variables from :func:`load_variables` or :func:`convert_state_dict`.
    reference: the model's variables (arrays or ShapeDtypeStructs), collections
      ``params`` and ``batch_stats``.
    missing_ok: path prefixes that may be absent from ``loaded`` (the classifier,
      which a self-supervised checkpoint does not have).

  Returns:
    The ``/``-joined paths of the reference that ``loaded`` lacks (allowed ones).

  Raises:
    WeightsError: a path of the reference missing from ``loaded`` (not allowed),
      a path of ``loaded`` the model does not have, or a shape that differs.
  """
  ref = {k: v for c in ("params", "batch_stats")
         for k, v in _flat(reference.get(c, {}), (c,)).items()}
  got = {k: v for c in ("params", "batch_stats")
         for k, v in _flat(loaded.get(c, {}), (c,)).items()}
  extra = [k for k in got if k not in ref]
  if extra:
    raise WeightsError(
        f"{'/'.join(extra[0])}: in the loaded variables but not in the model "
        f"({len(extra)} such)")
  absent = []
  for k, v in ref.items():
    if k not in got:
      if any(k[:len(p)] == tuple(p) for p in missing_ok):
        absent.append("/".join(k))
        continue
      raise WeightsError(f"{'/'.join(k)}: the model has it, the loaded variables "
                            "do not")
    if tuple(np.shape(got[k])) != tuple(v.shape):
      hint = (" (a checkpoint fc for another class count: convert with --drop_fc or "
              "use drop_classifier)" if k[:2] == ("params", "classifier") else "")
      raise WeightsError(
          f"{'/'.join(k)}: shape {tuple(np.shape(got[k]))} loaded, "
          f"{tuple(v.shape)} in the model{hint}")
  return absent


def init_variables(reference: Mapping[str, Any], loaded: Mapping[str, Any]) -> dict:
  """The model's variables with every leaf that ``loaded`` has replaced by it.

  Args:
    reference: ``model.init(...)`` output (concrete arrays).
    loaded: variables from :func:`load_variables`.

  Returns:
    Variables of the reference's structure and dtypes; leaves missing from
    ``loaded`` (the classifier, see :func:`check_variables`) keep their init.

  Raises:
    WeightsError: as :func:`check_variables`.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  check_variables(loaded, reference)
  got = _flat({c: loaded.get(c, {}) for c in ("params", "batch_stats")})

  def merge(tree, prefix):
    out = {}
    for k, v in tree.items():
      if isinstance(v, Mapping):
        out[k] = merge(v, prefix + (k,))
      else:
        new = got.get(prefix + (k,))
        out[k] = v if new is None else jnp.asarray(new, dtype=v.dtype)
    return out

  return {c: (merge(v, (c,)) if c in ("params", "batch_stats") else v)
          for c, v in reference.items()}




def load_variables_file(path: str) -> dict:
  """Model variables ``{"params": ..., "batch_stats": ...}`` (nested dicts) from a file.

  ``.npz``: one array per leaf, keyed by its ``/``-joined Flax path
  (``params/conv0/kernel``); any other file: ``flax.serialization.msgpack_serialize`` of
  the variables, as ``dlpl-convert`` writes from a PyTorch checkpoint
  (read by :func:`load_variables`).

  Raises:
    UsageError: the file is missing or unreadable, or an ``.npz`` whose keys are not
      Flax variable paths (a PyTorch state dict: convert it first).
  """
  if not os.path.isfile(path):
    raise UsageError(f"init_checkpoint {path!r} is not a file")
  if not path.endswith(".npz"):
    return load_variables(path)
  try:
    flat = npz.read_npz(path)
  except UsageError as e:
    raise UsageError(f"init_checkpoint: {e}") from None
  other = sorted(k for k in flat if k.split("/")[0] not in ("params", "batch_stats"))
  if other:
    raise UsageError(f"init_checkpoint {path!r}: keys such as {other[0]!r} are not Flax "
                     "variable paths (params/..., batch_stats/...); convert a PyTorch "
                     "state dict with dlpl-convert")
  import flax.traverse_util  # pylint: disable=import-outside-toplevel
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
