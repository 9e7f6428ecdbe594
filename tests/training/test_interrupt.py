"""SIGINT/SIGTERM as a flag (dlpl_jax/training/interrupt.py): the first signal asks for a
stop at once on its own line, a second aborts with 128 + signal number. (The loop's
stop during start-up: tests/training/test_loop.py; the command line's:
tests/e2e/test_command_line.py.)"""

import os
import signal
import textwrap
import threading

from dlpl_jax.training import interrupt


def _wait_for(predicate, polls=3000):
  """Polls (at most ``polls`` times, 10 ms apart) until the watcher thread has seen the
  signal."""
  event = threading.Event()
  for _ in range(polls):
    if predicate():
      return
    event.wait(0.01)
  raise AssertionError("the signal was not seen")


def test_first_notice_asks_for_a_stop_on_its_own_line(capsys):
  s = interrupt.StopSignal(prefix="[x] ")
  assert s.received is None and s.count == 0
  s.notify(signal.SIGTERM)
  assert s.received == "SIGTERM" and s.count == 1
  err = capsys.readouterr().err
  assert err.startswith("\n[x] SIGTERM received: stopping after the current step and "
                        "saving a checkpoint (send it again to abort at once")
  assert err.count("\n") == 2


def test_a_real_signal_is_seen_and_the_handlers_are_restored(capsys):
  before = {sig: signal.getsignal(sig) for sig in interrupt.StopSignal.SIGNALS}
  with interrupt.StopSignal() as s:
    assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the flag is set instead
    _wait_for(lambda: s.received is not None)
  assert s.received == "SIGINT"
  assert "[dlpl_jax] SIGINT received" in capsys.readouterr().err
  for sig, handler in before.items():
    assert signal.getsignal(sig) is handler


def test_off_the_main_thread_nothing_is_installed():
  before = signal.getsignal(signal.SIGTERM)
  seen = {}

  def run():
    with interrupt.StopSignal() as s:
      seen["handler"] = signal.getsignal(signal.SIGTERM)
      seen["received"] = s.received
  t = threading.Thread(target=run)
  t.start()
  t.join()
  assert seen == {"handler": before, "received": None}


def test_a_second_signal_aborts_at_once(python):
  """In a subprocess: the second SIGTERM ends the process with status 143 (128 + 15)
  without returning to the code that waits."""
  res = python(["-c", textwrap.dedent("""
      import os, signal, threading
      from dlpl_jax.training.interrupt import StopSignal
      with StopSignal() as s:
        os.kill(os.getpid(), signal.SIGTERM)
        while s.received is None:
          threading.Event().wait(0.01)
        print("stopping:", s.received, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(600)
      print("not aborted")
      """)], timeout=120)
  assert res.returncode == 128 + signal.SIGTERM, (res.returncode, res.stdout, res.stderr)
  assert res.stdout == "stopping: SIGTERM\n"
  assert "[dlpl_jax] SIGTERM received: stopping after the current step" in res.stderr
  assert ("[dlpl_jax] second SIGTERM: aborting now without saving; the latest complete "
          "checkpoint is intact") in res.stderr
