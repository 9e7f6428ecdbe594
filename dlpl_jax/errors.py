"""The two kinds of failure the command line tells apart, by exit status.

* :class:`UsageError` (exit status 2): the run cannot start as asked — a bad config value,
  an unknown key, a config file that does not exist, data that cannot be read, a workdir
  that cannot be used or is held by another run, a stored run whose config differs.
  Nothing was trained; fix the command and run it again.
* :class:`RunError` (exit status 1): a failure while training — non-finite values, a
  checkpoint that cannot be written. The latest complete checkpoint is intact.

Both carry a one-line message meant for the user.
"""

from __future__ import annotations


class UsageError(ValueError):
  """The command, config, data or workdir is not usable as given (exit status 2)."""
  exit_code = 2


class RunError(RuntimeError):
  """Training failed after it started (exit status 1)."""
  exit_code = 1
