"""Verified orbax checkpoints of the whole TrainState in ``WORKDIR/checkpoints``.

One step folder ``checkpoints/<step>/`` holds two orbax items:

* ``state/``: the TrainState (``StandardSave``: OCDBT/zarr array data and ``_METADATA``);
* ``checksums/``: JSON ``{"format": 1, "step": step, "algorithm": "crc32", "arrays":
  {path: {"crc32": "89abcdef", "dtype": "float32", "shape": [3, 3, 3, 32]}}}`` with one
  entry per leaf of the state, keyed by its ``/``-joined path (``params/conv0/kernel``).

Saves are synchronous, so a failed write raises in the caller at once
(:class:`CheckpointError`, one line), and only finite states are written
(:class:`NonFiniteStateError`). A restore checks the stored shapes against the fresh state
(:class:`CheckpointMismatchError` on a different model), then the checksums and the
finiteness of the restored values; a damaged step is reported in one line and the next
older one is used. Nothing is ever deleted here except by orbax's ``keep`` policy.

"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zlib
from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dlpl_jax import errors
from dlpl_jax.errors import RunError

_STATE = "state"
_CHECKSUMS = "checksums"
SET_ASIDE = "set_aside"
_FORMAT = 1
_MAX_LISTED = 3
_SPACE_FACTOR = 1.2
_SPACE_OVERHEAD = 1 << 20   # metadata files, OCDBT manifests


class CheckpointError(RunError):
  """A checkpoint cannot be written, read or used; the message is one line."""


class NonFiniteStateError(CheckpointError):
  """The state to save holds NaN/inf values; nothing was written."""


class CheckpointMismatchError(CheckpointError):
  """The stored state has another structure/shapes than the fresh one (another model)."""
  exit_code = 2


class _Damaged(Exception):
  """A step folder cannot be used; ``args[0]`` says why (one line)."""


def _cause(exc: BaseException, limit: int = 240) -> str:
  """One line for an exception: the innermost cause, an OSError's errno form preferred."""
  chain, seen = [], set()
  e: BaseException | None = exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in chain:
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
      return f"[Errno {e.errno}] {e.strerror}"
  inner = chain[-1]
  lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
  name = type(inner).__name__
  text = lines[0] if lines else name
  if type(inner) not in (Exception, ValueError, RuntimeError) and not isinstance(
      inner, OSError) and not text.startswith(name):
    text = f"{name}: {text}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _listed(items: list[str], limit: int = _MAX_LISTED) -> str:
  more = len(items) - limit
  return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def _shape_str(shape) -> str:
  return "(" + ",".join(str(int(d)) for d in shape) + ")"


def _flat(tree) -> dict[str, Any]:
  """The leaves of ``tree`` keyed by their ``/``-joined path (orbax's naming)."""
  return ocp.tree.to_flat_dict(tree, sep="/")


def _is_orbax_read_leftover(unraisable) -> bool:
  """An error from the reads still in flight when an orbax restore failed: TensorStore
  callbacks into the closed event loop, or the abandoned read coroutines."""
  exc, obj = unraisable.exc_value, unraisable.object
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return True
  code = getattr(obj, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _quiet_orbax_read_leftovers() -> None:
  """Keeps a failed restore (truncated array file) to its one-line report: drops the
  leftovers of its in-flight reads that Python would print as tracebacks; passes every
  other unraisable exception on to the hook installed before."""
  previous = sys.unraisablehook
  if getattr(previous, "_dlpl_jax_quiet", False):
    return

  def hook(unraisable):
    if not _is_orbax_read_leftover(unraisable):
      previous(unraisable)
  hook._dlpl_jax_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _host_arrays(leaves: dict[str, Any]) -> dict[str, np.ndarray | None]:
  """Host copies of the leaves (one batched transfer); None for a leaf sharded across
  processes and not replicated (not readable here)."""
  fetch, out = {}, {}
  for path, x in leaves.items():
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        fetch[path] = x.addressable_data(0)
      else:
        out[path] = None
    else:
      fetch[path] = x
  for path, v in jax.device_get(fetch).items():
    out[path] = np.asarray(v)
  return out


def _is_float(dtype) -> bool:
  return jnp.issubdtype(dtype, jnp.inexact)


def _crc32(a: np.ndarray) -> str:
  a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
  return f"{zlib.crc32(a) & 0xFFFFFFFF:08x}"


def _scan(leaves: dict[str, Any], dtypes: dict[str, str] | None = None):
  """``(checksums, non_finite_paths)`` of a flat state; ``dtypes`` (path -> dtype name)
  casts a leaf before hashing (a Python scalar stored as int64, restored as int32)."""
  host = _host_arrays(leaves)
  checksums, bad = {}, []
  for path, a in host.items():
    if a is None:
      x = leaves[path]
      if _is_float(x.dtype) and not bool(jnp.all(jnp.isfinite(x))):
        bad.append(path)
      checksums[path] = {"crc32": None, "dtype": str(x.dtype), "shape": list(x.shape)}
      continue
    if _is_float(a.dtype) and not np.isfinite(a).all():
      bad.append(path)
    want = (dtypes or {}).get(path)
    if want is not None and want != str(a.dtype):
      try:
        a = a.astype(jnp.dtype(want))
      except TypeError:
        pass
    checksums[path] = {"crc32": _crc32(a), "dtype": str(a.dtype), "shape": list(a.shape)}
  return checksums, bad


def estimate_bytes(state) -> int:
  """About how many bytes one checkpoint of ``state`` takes on disk (uncompressed)."""
  total = 0
  for x in jax.tree_util.tree_leaves(state):
    nbytes = getattr(x, "nbytes", None)
    total += int(nbytes) if nbytes is not None else np.asarray(x).nbytes
  return int(total * _SPACE_FACTOR) + _SPACE_OVERHEAD


def _first_non_folder(path: str) -> str | None:
  """The first existing component of ``path`` that is not a folder, if any."""
  p = os.path.abspath(path)
  parts = []
  while True:
    parts.append(p)
    parent = os.path.dirname(p)
    if parent == p:
      break
    p = parent
  for p in reversed(parts):
    if os.path.lexists(p) and not os.path.isdir(p):
      return p
    if not os.path.exists(p):
      return None
  return None


def checkpoint_dir(workdir: str) -> str:
  """``WORKDIR/checkpoints`` as an absolute path."""
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def check_writable(workdir: str, state=None) -> str:
  """Creates ``WORKDIR/checkpoints`` and checks that a checkpoint can be written there.

  Args:
    workdir: the run folder.
    state: when given, the free space must hold one checkpoint of it
      (:func:`estimate_bytes`: the array bytes times 1.2, plus 1 MiB).

  Returns:
    The absolute checkpoint folder.

  Raises:
    CheckpointError: (one line) a path component is a file, no write permission, a
      read-only file system, or not enough free space.
  """
  directory = checkpoint_dir(workdir)
  blocker = _first_non_folder(directory)
  if blocker is not None:
    raise CheckpointError(f"cannot create the checkpoint folder {directory}: {blocker} "
                          "exists and is not a folder")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise CheckpointError(
        f"cannot create the checkpoint folder {directory}: {_cause(e)}") from None
  try:
    fd, probe = tempfile.mkstemp(prefix=".write_check.", dir=directory)
    try:
      os.write(fd, b"0")
    finally:
      os.close(fd)
      os.remove(probe)
  except OSError as e:
    raise CheckpointError(
        f"cannot write to the checkpoint folder {directory}: {_cause(e)}") from None
  if state is not None:
    need = estimate_bytes(state)
    free = shutil.disk_usage(directory).free
    if free < need:
      raise CheckpointError(
          f"not enough free space for a checkpoint in {directory}: {free / 2**20:.1f} MiB "
          f"free, about {need / 2**20:.1f} MiB needed")
  return directory


class Checkpointer:
  """Saves every ``every`` steps (and on demand), keeps the newest ``keep``, restores the
  newest intact one.

  The restore target is the abstract form (shape, dtype, sharding) of the given fresh
  state, so the restored arrays get its shardings, dtypes and shapes.

  Args:
    workdir: the run folder; checkpoints go to ``WORKDIR/checkpoints``.
    every: save interval for ``save(step, state)`` without ``force``.
    keep: how many of the newest checkpoints to keep.
    log: one-line notes (damaged steps skipped at restore); default:
      stderr with the prefix ``[dlpl_jax] `` on process 0.

  Raises:
    CheckpointError: (one line) the checkpoint folder cannot be created or written.
  """

  def __init__(self, workdir: str, every: int, keep: int,
               log: Callable[[str], None] | None = None):
    self.directory = check_writable(workdir)
    self.set_aside_directory = os.path.join(self.directory, SET_ASIDE)
    self._every = every
    self._keep = keep
    self._log = log or errors.log
    self._handler = ocp.StandardCheckpointHandler()
    self.manager = self._open_manager()

  def _open_manager(self) -> ocp.CheckpointManager:
    try:
      return ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=self._keep, save_interval_steps=self._every, create=True,
              enable_async_checkpointing=False))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot open the checkpoint folder {self.directory}: {_cause(e)}") from None

  def _reload(self) -> None:
    self.manager.close()
    self.manager = self._open_manager()

  def all_steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _step_dir(self, step: int) -> epath.Path:
    return epath.Path(self.directory) / str(step)

  # -- saving ---------------------------------------------------------------------------

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves ``state`` as ``step``; returns whether it saved.

    No-op (False) when that step is already saved, or, without ``force``, when ``step``
    is not due (``every``). The write is synchronous.

    Raises:
      NonFiniteStateError: a floating leaf holds NaN/inf (nothing written).
      CheckpointError: the write failed (one line: step, folder, cause).
      JaxRuntimeError: with several processes, a barrier failed (another process died).
    """
    step = int(step)
    if step in self.manager.all_steps():
      return False
    if not force and not self.manager.should_save(step):
      return False
    leaves = _flat(state)
    checksums, bad = _scan(leaves)
    if bad:
      raise NonFiniteStateError(
          f"refusing to save checkpoint step {step} to {self.directory}: non-finite values "
          f"in {_listed(bad)}; the older checkpoints are kept")
    record = {"format": _FORMAT, "step": step, "algorithm": "crc32", "arrays": checksums}
    try:
      saved = self.manager.save(
          step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                           _CHECKSUMS: ocp.args.JsonSave(record)}),
          force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, jax.errors.JaxRuntimeError) and jax.process_count() > 1:
        raise  # a failed barrier: another process died, as the command line reports
      raise CheckpointError(f"cannot write checkpoint step {step} to {self.directory}: "
                            f"{_cause(e)}") from None
    return bool(saved)

  # -- restoring ------------------------------------------------------------------------

  def _check_structure(self, step: int, stored: dict[str, Any],
                       expected: dict[str, Any]) -> None:
    """Raises CheckpointMismatchError when the stored leaves (paths, shapes, array
    dtypes) differ from the fresh state's; the ``params/`` leaves are named first."""
    diffs = []
    for path, x in expected.items():
      m = stored.get(path)
      if m is None:
        diffs.append((path, "not in the checkpoint"))
        continue
      shape = tuple(getattr(x, "shape", np.shape(x)))
      if tuple(m.shape) != shape:
        diffs.append((path, f"stored {_shape_str(m.shape)}, expected {_shape_str(shape)}"))
        continue
      scalar = not hasattr(x, "dtype") or isinstance(m, ocp.metadata.ScalarMetadata)
      if not scalar and np.dtype(m.dtype) != np.dtype(x.dtype):
        diffs.append((path, f"stored {np.dtype(m.dtype)}, expected {np.dtype(x.dtype)}"))
    diffs += [(path, "not in this config's state") for path in stored if path not in expected]
    if diffs:
      diffs.sort(key=lambda d: not d[0].startswith("params/"))
      raise CheckpointMismatchError(
          f"the checkpoint at step {step} in {self.directory} holds a different "
          f"model/state than this config ({_listed([f'{p}: {d}' for p, d in diffs], 2)}); "
          "use the config it was written with, or another --workdir")

  def _restore_verified(self, step: int, state):
    """The verified restored state of ``step``.

    Raises:
      _Damaged: the step cannot be used (one-line reason).
      CheckpointMismatchError: the step holds another model.
    """
    step_dir = self._step_dir(step)
    if not (step_dir / _STATE).is_dir():
      raise _Damaged(f"no '{_STATE}' folder")
    try:
      stored = _flat(self._handler.metadata(step_dir / _STATE).tree)
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(f"unreadable metadata: {_cause(e)}") from None
    expected = _flat(state)
    self._check_structure(step, stored, expected)
    try:
      record = ocp.JsonCheckpointHandler().restore(step_dir / _CHECKSUMS)
      arrays = record["arrays"]
      if record.get("step") != step:
        raise _Damaged(f"the checksums belong to step {record.get('step')}")
    except _Damaged:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(f"unreadable checksums: {_cause(e)}") from None
    missing = [p for p in expected if p not in arrays]
    if missing:
      raise _Damaged(f"no checksums for {_listed(missing)}")

    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    _quiet_orbax_read_leftovers()
    try:
      restored = self._handler.restore(step_dir / _STATE,
                                       args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(f"unreadable: {_cause(e)}") from None
    checksums, bad = _scan(_flat(restored), {p: r.get("dtype") for p, r in arrays.items()})
    wrong = [p for p, r in checksums.items()
             if r["crc32"] is not None and arrays[p].get("crc32") is not None
             and r["crc32"] != arrays[p]["crc32"]]
    if wrong:
      raise _Damaged(f"checksum mismatch in {_listed(wrong)}")
    if bad:
      raise _Damaged(f"non-finite values in {_listed(bad)}")
    return restored

  def restore_latest(self, state):
    """Returns ``(state, step)`` from the newest intact checkpoint, or ``(state, None)``
    when there is none at all.

    Steps are tried newest first; a damaged one (unreadable, checksum mismatch,
    non-finite values) is reported in one line through ``log`` and the next older one is
    tried. Nothing is deleted: after a fallback, :meth:`set_aside_after` moves the
    damaged newer steps out of the way.

    Raises:
      CheckpointMismatchError: the newest readable step holds another model/state.
      CheckpointError: checkpoints exist but none is intact (one line, every step tried).
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return state, None
    damaged: list[tuple[int, str]] = []
    for step in steps:
      try:
        restored = self._restore_verified(step, state)
      except _Damaged as e:
        damaged.append((step, str(e)))
        continue
      if len(damaged) == 1:
        self._log(f"checkpoint step {damaged[0][0]} in {self.directory} is damaged "
                  f"({damaged[0][1]}); using step {step}")
      elif damaged:
        self._log(f"checkpoint steps {', '.join(str(s) for s, _ in damaged)} in "
                  f"{self.directory} are damaged ("
                  + "; ".join(f"step {s}: {r}" for s, r in damaged)
                  + f"); using step {step}")
      return restored, step
    raise CheckpointError(
        f"no intact checkpoint in {self.directory} ("
        + "; ".join(f"step {s}: {r}" for s, r in damaged)
        + "); nothing was deleted; move the folder away to start afresh")

  def restore(self, state, step: int):
    """Returns the state of checkpoint ``step``, verified like :meth:`restore_latest`.

    Raises:
      CheckpointError: no such step (the message lists the saved ones), or it is damaged.
      CheckpointMismatchError: it holds another model/state.
    """
    step = int(step)
    steps = self.all_steps()
    if step not in steps:
      have = ", ".join(map(str, steps)) if steps else "none"
      raise CheckpointError(
          f"no checkpoint step {step} in {self.directory} (saved steps: {have})")
    try:
      restored = self._restore_verified(step, state)
    except _Damaged as e:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} is damaged ({e})") from None
    return restored

  def set_aside_after(self, step: int) -> list[int]:
    """Moves the step folders newer than ``step`` to ``checkpoints/set_aside/<step>``
    (renamed, not deleted; ``<step>.1``, ``<step>.2``, ... when that name is taken), so a
    run resumed from ``step`` does not find them later. Returns the steps moved."""
    step = int(step)
    newer = [s for s in self.all_steps() if s > step]
    if not newer:
      return []
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      try:
        os.makedirs(self.set_aside_directory, exist_ok=True)
        for s in newer:
          dest = os.path.join(self.set_aside_directory, str(s))
          n = 0
          while os.path.lexists(dest):
            n += 1
            dest = os.path.join(self.set_aside_directory, f"{s}.{n}")
          os.rename(str(self._step_dir(s)), dest)
      except OSError as e:
        raise CheckpointError(f"cannot move checkpoints newer than step {step} to "
                              f"{self.set_aside_directory}: {_cause(e)}") from None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("dlpl_jax_checkpoint_set_aside")
    self._reload()
    return newer

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
    self._handler.close()
