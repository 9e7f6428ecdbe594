"""The two kinds of failure the command line tells apart, by exit status, and how
every command reports them.

* :class:`UsageError` (exit status 2): the run cannot start as asked — a bad config value,
  an unknown key, a config file that does not exist, data that cannot be read, a workdir
  that cannot be used or is held by another run, a stored run whose config differs.
  Nothing was trained; fix the command and run it again.
* :class:`RunError` (exit status 1): a failure while training — non-finite values, a
  checkpoint that cannot be written. The latest complete checkpoint is intact.

Both carry a one-line message meant for the user. Every command (``dlpl_jax.main``,
``analyze``, ``zeroshot``, ``convert``, ``compact_data``, ``bench``) prints an error as
one line on stderr, ``[dlpl_jax] error: <what happened>`` (:func:`report`), never a
traceback for bad input. The tools run their work through :func:`run_command`, which
turns these exceptions and an ``OSError`` into that line and the exit status; they check
their output paths before any work (:func:`check_output`) and parse their arguments with
:class:`ArgumentParser` (a bad argument: one line, status 2).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable, Iterable

PREFIX = "[dlpl_jax] error:"
# An OSError with one of these on a path the command was given means the path is not
# usable as given (exit status 2); any other (disk full, I/O error) is a failure while
# running (status 1).
_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                          errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.ENAMETOOLONG,
                          errno.ELOOP})


class UsageError(ValueError):
  """The command, config, data or workdir is not usable as given (exit status 2)."""
  exit_code = 2


class RunError(RuntimeError):
  """Training failed after it started (exit status 1)."""
  exit_code = 1


def require(extra: str, *modules: str) -> None:
  """Refuses to go on without the optional packages a command needs.

  Args:
    extra: the package extra that brings them (``train``, ``tensorflow``, ``analyze``).
    modules: top-level module names (``ml_collections``, ``matplotlib``, ...).

  Raises:
    UsageError: one line naming the first missing module and the install command,
      ``pip install 'dlpl_jax[train]'``.
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  for module in modules:
    if importlib.util.find_spec(module) is None:
      raise UsageError(f"this needs the '{extra}' extra, which is not installed (no module "
                       f"named {module!r}): pip install 'dlpl_jax[{extra}]'")


def one_line(text) -> str:
  """``text`` with every run of whitespace (newlines included) as one space.

  >>> one_line("bad value\\n  see --help ")
  'bad value see --help'
  """
  return " ".join(str(text).split())


def log(msg: str) -> None:
  """Prints ``[dlpl_jax] <msg>`` on stderr, from process 0 of a run only."""
  jax = sys.modules.get("jax")
  if jax is None or jax.process_index() == 0:
    print(f"[dlpl_jax] {msg}", file=sys.stderr, flush=True)


def report(message, code: int) -> int:
  """Prints ``[dlpl_jax] error: <message>`` as one line on stderr; returns ``code``."""
  print(f"{PREFIX} {one_line(message)}", file=sys.stderr, flush=True)
  return code


def os_error_message(e: OSError) -> str:
  """What happened and to which path, e.g. ``Read-only file system: /mnt/x``.

  >>> os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))
  'Read-only file system: /mnt/x'
  """
  what = e.strerror or str(e)
  paths = [os.fspath(p) for p in (e.filename, e.filename2) if p is not None]
  return f"{what}: {' -> '.join(paths)}" if paths else what


def _at_or_under(path, roots: Iterable) -> bool:
  p = os.path.abspath(os.fspath(path))
  for root in roots:
    r = os.path.abspath(os.fspath(root))
    if p == r or p.startswith(r.rstrip(os.sep) + os.sep):
      return True
  return False


def os_error_status(e: OSError, paths: Iterable = ()) -> int:
  """2 when ``e`` says that a path the command was given (or one under it) is not usable
  (absent, read-only, no permission, a file where a folder belongs or the reverse);
  1 otherwise: a failure while running (disk full, I/O error, another path)."""
  names = [n for n in (e.filename, e.filename2) if n is not None]
  if e.errno in _PATH_ERRNOS and any(_at_or_under(n, paths) for n in names):
    return UsageError.exit_code
  return RunError.exit_code


def run_command(body: Callable[[], int | None], paths: Iterable = ()) -> int:
  """Runs a command's work and returns its exit status, reporting a failure in one line.

  Args:
    body: the work; returns an exit status (None: 0).
    paths: the paths the command was given (inputs and outputs), for
      :func:`os_error_status`.

  Returns:
    ``body()``'s status; 2 for a :class:`UsageError`, 1 for a :class:`RunError`, and
    :func:`os_error_status` for an ``OSError`` (each reported by :func:`report`). Any
    other exception is a bug and propagates with its traceback.
  """
  paths = [p for p in paths if p]
  try:
    status = body()
  except (UsageError, RunError) as e:
    return report(e, e.exit_code)
  except OSError as e:
    return report(os_error_message(e), os_error_status(e, paths))
  return 0 if status is None else status


def _nearest_existing(path: str) -> str:
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_output(path, flag: str = "--out", folder: bool = False) -> None:
  """Checks, creating nothing, that ``path`` can be written: a file (or, with ``folder``,
  a folder that the command fills, created with its parents when absent).

  Raises:
    UsageError: naming ``flag`` and the path: it exists as the other kind (a folder
      where a file is to be written, or the reverse), it lies under a file, or the
      nearest existing folder (or the existing file) cannot be written (read-only file
      system, no permission).
  """
  shown = os.fspath(path)
  p = os.path.abspath(shown)
  if folder and os.path.exists(p) and not os.path.isdir(p):
    raise UsageError(f"{flag} {shown} is a file, not a folder")
  if not folder and os.path.isdir(p):
    raise UsageError(f"{flag} {shown} is a folder; give the path of a file to write")
  base = _nearest_existing(p if folder else os.path.dirname(p))
  if not os.path.isdir(base):
    raise UsageError(f"{flag} {shown}: {base} is a file, not a folder")
  if not os.access(base, os.W_OK | os.X_OK):
    raise UsageError(f"{flag} {shown}: cannot write in {base} (read-only file system or "
                     "no permission)")
  if not folder and os.path.exists(p) and not os.access(p, os.W_OK):
    raise UsageError(f"{flag} {shown}: the existing file cannot be written (read-only "
                     "file system or no permission)")






class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose errors are one line, ``[dlpl_jax] error: ...``,
  with exit status 2 (argparse's own status for a usage error)."""

  def error(self, message):
    report(f"{message} (see {self.prog} --help)", UsageError.exit_code)
    sys.exit(UsageError.exit_code)


_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def parse_absl_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for ``app.run(..., flags_parser=...)``: a bad or missing flag is
  one line with status 2, and ``--help`` exits 0 after the usage (absl exits 1)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(report(str(e).splitlines()[0], UsageError.exit_code))
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
