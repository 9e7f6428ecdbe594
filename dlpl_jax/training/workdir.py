"""The run folder: usable, held by one run at a time, consistent after a resume.

* :func:`prepare` checks at start that the workdir is a writable folder (one line when
  not), before any data is read.
* :class:`Lock` lets one run at a time use a workdir; a lock left by a process that died
  (kill -9, power loss) is taken over, since the kernel releases ``flock`` locks with
  their process.
* :func:`check_config` refuses to resume a run whose stored ``config.json`` differs in
  anything that changes training, unless the user allows it; :func:`write_config`
  writes it atomically.
* :class:`NonFiniteMarker` remembers a non-finite stop, so re-running the same command
  from the same checkpoint says it will stop there again instead of looping silently.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from typing import Callable

from dlpl_jax import configs
from dlpl_jax.errors import UsageError

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
NONFINITE_FILE = "nonfinite.json"


def prepare(workdir: str) -> str:
  """Creates ``workdir`` and checks that it is a writable folder; returns its abspath.

  Raises:
    UsageError: one line naming the path and the cause (a path component is a file, no
      permission, a read-only filesystem, ``metrics.jsonl`` is not a file, ...).
  """
  path = os.path.abspath(workdir)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"cannot use workdir {path}: {e.strerror or e}"
                     + (f" ({e.filename})" if e.filename and e.filename != path else "")
                     ) from e
  for name in ("metrics.jsonl", CONFIG_FILE, "summary.json"):
    p = os.path.join(path, name)
    if os.path.exists(p) and not os.path.isfile(p):
      raise UsageError(f"cannot use workdir {path}: {p} exists and is not a file")
  return path


class Lock:
  """An exclusive ``flock`` on ``WORKDIR/.lock`` holding the owner's pid, host and start.

  Args:
    workdir: the run folder.
    log: where to say that a stale lock was taken over.
  """

  def __init__(self, workdir: str, log: Callable[[str], None] = print):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._log = log
    self._fd = None

  def acquire(self) -> "Lock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe(_read_holder(fd))
      os.close(fd)
      raise UsageError(f"workdir {os.path.dirname(self.path)} is in use by another run "
                       f"({holder}); wait for it, stop it, or pass another --workdir") from None
    previous = _read_holder(fd)
    if previous:  # the holder died without releasing: the kernel dropped its flock
      self._log(f"took over the lock of a run that is no longer running "
                f"({_describe(previous)})")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)  # empty: a clean exit leaves nothing to take over
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, OSError):
    return {}


def _describe(info: dict) -> str:
  if not info:
    return "holder unknown"
  return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"


def read_config(workdir: str) -> dict | None:
  """The stored run's config; None when there is no ``config.json``.

  Raises:
    UsageError: the file is there but is not a JSON object (damaged or edited).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
  except FileNotFoundError:
    return None
  except ValueError as e:  # includes UnicodeDecodeError
    raise UsageError(f"{path} cannot be read ({str(e).splitlines()[0]})") from None
  if not isinstance(stored, dict):
    raise UsageError(f"{path} holds a JSON {type(stored).__name__}, not a config")
  return stored


def check_config(workdir: str, config: dict, step: int, allow_change: bool,
                 log: Callable[[str], None] = print, record: bool = True) -> list:
  """Compares ``config`` (plain data, :func:`dlpl_jax.configs.to_dict`) with the run
  stored in ``workdir`` before resuming at ``step``.

  ``record``: append the allowed change to ``config_changes.jsonl`` (one process of a
  multi-process run does).

  Returns:
    The training-relevant differences ``(key, stored, new)`` (empty when equal).

  Raises:
    UsageError: when they differ and ``allow_change`` is False: one line naming the keys
      and the stored and new values.
  """
  try:
    stored = read_config(workdir)
  except UsageError as e:
    if not allow_change:
      raise UsageError(f"{e}: the run's config cannot be compared. Restore the file, or "
                       "pass --allow_config_change to continue with the given config "
                       "(the file is then rewritten)") from None
    log(f"note: {e}; continuing with the given config (--allow_config_change)")
    return []
  if stored is None:
    log(f"note: {workdir} has checkpoints but no {CONFIG_FILE}; the config cannot be "
        "compared with the stored run")
    return []
  diff = configs.training_diff(stored, config)
  if not diff:
    return []
  what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff)
  if not allow_change:
    raise UsageError(
        f"{workdir} holds a run at step {step} trained with another config ({what}). "
        "Pass another --workdir for a new run, or --allow_config_change to continue this "
        "one with the new values")
  log(f"continuing the run at step {step} with a changed config ({what}); recorded in "
      f"{CHANGES_FILE}")
  if not record:
    return diff
  with open(os.path.join(workdir, CHANGES_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": step, "changes": [list(d) for d in diff]}, default=str)
            + "\n")
  return diff


def write_config(workdir: str, config: dict) -> None:
  """Writes ``config.json`` (the config as plain data) atomically (a reader never sees
  half a file)."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  os.replace(path + ".tmp", path)


class NonFiniteMarker:
  """``WORKDIR/nonfinite.json``: where the last run stopped on non-finite values."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, NONFINITE_FILE)

  def read(self) -> dict | None:
    try:
      with open(self.path, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def write(self, step: int, resumed_from: int | None, config: dict) -> None:
    with open(self.path, "w", encoding="utf-8") as f:
      json.dump({"step": step, "resumed_from": resumed_from, "config": config}, f)

  def clear(self) -> None:
    if os.path.exists(self.path):
      os.remove(self.path)

  def repeats(self, resumed_from: int | None, config: dict) -> dict | None:
    """The stored stop when this start repeats it: same checkpoint, same training config."""
    m = self.read()
    if m and m.get("resumed_from") == resumed_from and not configs.training_diff(
        m.get("config", {}), config):
      return m
    return None
