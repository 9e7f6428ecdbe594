"""Prompt, predictable stops on SIGINT (Ctrl-C) and SIGTERM.

The first signal is acknowledged at once on its own line, whatever the main thread is
doing (a long XLA step or TensorFlow's data loading keeps Python's own handlers waiting:
a thread reading :func:`signal.set_wakeup_fd` sees the signal immediately). The training
loop then stops after the current step and saves a checkpoint. A second signal aborts at
once with status 128 + signal number (130 for SIGINT, 143 for SIGTERM), without saving:
checkpoints are written to a temporary folder and renamed when complete, so the latest
complete checkpoint stays intact.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag (``received``) the loop checks between steps.

  Use as a context manager in the main thread; elsewhere (a notebook's worker thread)
  it installs nothing and ``received`` stays None.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, prefix: str = "[dlpl_jax] "):
    self.received: str | None = None
    self.prefix = prefix
    self.count = 0
    self._previous = {}
    self._wakeup = None
    self._sockets = None
    self._lock = threading.Lock()

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is not threading.main_thread():
      return self
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    r, w = socket.socketpair()
    r.setblocking(True)
    w.setblocking(False)
    self._sockets = (r, w)
    self._wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=self._watch, name="dlpl-stop-signal", daemon=True).start()
    return self

  def _handle(self, signum, _frame):  # Python-level handler: the watcher does the work
    del signum

  def _watch(self):
    r = self._sockets[0]
    while True:
      try:
        data = r.recv(64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum in self.SIGNALS:
          self.notify(signum)

  def notify(self, signum: int) -> None:
    """Records one signal: the first asks for a stop, the second aborts the process."""
    with self._lock:
      self.count += 1
      name = signal.Signals(signum).name
      if self.count == 1:
        self.received = name
        sys.stderr.write(f"\n{self.prefix}{name} received: stopping after the current step "
                         "and saving a checkpoint (send it again to abort at once without "
                         "saving)\n")
        sys.stderr.flush()
        return
      sys.stderr.write(f"\n{self.prefix}second {name}: aborting now without saving; the "
                       "latest complete checkpoint is intact\n")
      sys.stderr.flush()
      os._exit(128 + signum)

  def __exit__(self, *exc):
    if self._sockets is None:
      return
    signal.set_wakeup_fd(self._wakeup if self._wakeup is not None else -1)
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    for s in self._sockets:
      try:
        s.shutdown(socket.SHUT_RDWR)  # wakes the watcher's recv
      except OSError:
        pass
      s.close()
    self._sockets = None
