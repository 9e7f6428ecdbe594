"""The training loop: ``train_and_evaluate(config, workdir)``, all that ``main`` calls
(tests and notebooks call it too, optionally with their own in-memory data).

Set-up first (:mod:`dlpl_jax.training.setup`): the config read once, the state created
or restored from the workdir's checkpoints (before any data is read, so that a damaged
checkpoint or a changed config is reported in seconds), the input built. Then the loop,
which calls small pieces with one job each (:mod:`dlpl_jax.training.periodic`): the
metric window and its log, progress, evaluation with its feature files, checkpoints, the
non-finite guard, the stop (SIGINT/SIGTERM, agreed by every process, or ``stop_at``).
"""

from __future__ import annotations

import contextlib
import os
import time

import jax

from dlpl_jax.data import in_memory
from dlpl_jax.errors import UsageError, log
from dlpl_jax.training import checkpoint as checkpoint_lib
from dlpl_jax.training import interrupt
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import metrics as metrics_lib
from dlpl_jax.training import periodic
from dlpl_jax.training import setup
from dlpl_jax.training import state as state_lib
from dlpl_jax.training import workdir as workdir_lib
from dlpl_jax.training.periodic import NonFiniteLossError  # noqa: F401  (part of the API)


def train_and_evaluate(config, workdir: str, data: in_memory.SSLData | None = None,
                       stop_at: int | None = None, *, allow_config_change: bool = False,
                       restore_step: int | None = None, allow_cpu: bool = True,
                       stop: interrupt.StopSignal | None = None) -> dict:
  """Trains (or resumes) a FixMatch/DebiasPL run in ``workdir`` and evaluates it.

  Args:
    config: a ConfigDict extending :func:`dlpl_jax.configs.get_base_config`.
    workdir: the run folder (checkpoints, metrics, config.json, summary.json).
    data: in-memory splits to train on; default: the config's dataset.
    stop_at: stop after this step with a checkpoint, as if interrupted.
    allow_config_change: resume a run stored with another config (recorded).
    restore_step: resume from this checkpoint; newer ones are set aside.
    allow_cpu: start a run that the CPU guard refuses (``setup.check_devices``).
    stop: the SIGINT/SIGTERM handler, when the caller installed it; else here.

  Returns:
    The summary (also ``summary.json``); ``interrupted`` when stopped early.

  Raises:
    UsageError: the config, data or workdir is unusable (nothing trained).
    NonFiniteLossError: non-finite loss or params (the last good checkpoint is kept).
    RunError: a checkpoint could not be written.
  """
  spec = setup.read(config)
  t_start = time.time()
  with run_folder(workdir, stop) as (workdir, stop):
    mesh = mesh_lib.make_mesh()
    setup.check_devices(spec, mesh, allow_cpu, log)
    log(f"devices: {mesh.size} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)")
    if data is None and spec.image_shape is None:  # an unknown dataset: its image shape
      data = in_memory.load(spec.data)
    ckpt, state, restored = restore(spec, workdir, mesh, restore_step,
                                    spec.image_shape if data is None else data.x_l.shape[1:])
    step = int(jax.device_get(state.step))
    records = resume(spec, workdir, ckpt.directory, restored, step, allow_config_change)
    writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                      class_names=spec.class_names)
    writer.rebuild(records)
    evals = {r["step"]: r for r in records if r.get("kind") == "eval"}
    guard = periodic.NonFiniteGuard(workdir, ckpt, restored, spec.config)
    guard.warn_if_repeating()
    inp = None if stopped_in_startup(stop) else setup.make_input(spec, mesh, data, step)
    if inp is None or stopped_in_startup(stop, inp.describe):
      return stop_in_startup(stop, step, workdir, writer, ckpt)

    loop = spec.loop
    lr = state_lib.learning_rate(spec.optimizer)
    window, clock = periodic.MetricWindow(), periodic.Stopwatch()
    progress = periodic.Progress(loop.total_steps, step, loop.progress)
    stopper = periodic.Stopper(stop, mesh, stop_at, say=progress.say)
    first, stopped, record = step, False, {}
    try:
      while step < loop.total_steps:
        if stopper():
          stopped = True
          break
        with clock("step dispatch"):
          state, metrics = inp.step(state)
        step += 1
        with clock("wait for the device"):
          window.add(step, metrics)
        if step == first + 1:
          jax.block_until_ready(metrics)
          progress.say(f"first step (compile + run) took {time.time() - t_start:.1f}s "
                       "since start")
          window.restart_clock()
          clock.reset()
        progress.tick()
        last = step == loop.total_steps
        do_eval = step % loop.eval_every == 0 or last
        stopper.reached(step, last)
        if step % loop.log_every == 0 or last or do_eval:
          with clock("log"):
            record = log_window(window, guard, state, lr, step, writer)
          progress.report(step, record)
        if do_eval:
          with clock("evaluate"):
            evals[step] = periodic.evaluation(step, state, inp.evaluate, writer, workdir)
          state = periodic.reset_counters(state, mesh)
          progress.say(periodic.eval_line(step, evals[step], record, spec.eval_params))
        if step % loop.checkpoint_every == 0 or last:
          with clock("checkpoint"):
            periodic.save_checkpoint(ckpt, step, state, guard)
      stopped = stopper.after_loop(stopped)
      if stopped:
        if window.pending:  # the steps since the last log are written, not dropped
          record = log_window(window, guard, state, lr, step, writer)
        periodic.save_checkpoint(ckpt, step, state, guard)
        ckpt.wait()
    finally:
      progress.close()
      ckpt.close()
      writer.close()
    if stopped:
      log(f"{stop.received}: checkpoint saved at step {step} in {ckpt.directory}; re-run "
          "the same command to resume")
    summary = periodic.summary(step, loop.total_steps, stopped, spec.method, evals, record)
    summary.update(wall_seconds_this_invocation=time.time() - t_start,
                   device=f"{mesh.size} x {jax.devices()[0].device_kind}",
                   host_seconds=clock.report())
    periodic.write_summary(workdir, summary, spec.eval_params)
    return summary


@contextlib.contextmanager
def run_folder(workdir: str, stop: interrupt.StopSignal | None):
  """The workdir prepared and locked (one run at a time) and the SIGINT/SIGTERM handler
  installed, unless the caller did; when one process cannot use the workdir, every
  process stops. Yields ``(absolute workdir, stop signal)``."""
  with contextlib.ExitStack() as stack:
    if stop is None:
      stop = stack.enter_context(interrupt.StopSignal())
    error = None
    try:
      workdir = workdir_lib.prepare(workdir)
      if jax.process_index() == 0:
        stack.enter_context(workdir_lib.Lock(workdir, log=log))
    except UsageError as e:
      error = e
    if periodic.any_process(error is not None):
      raise error or UsageError(f"another process cannot use the workdir {workdir} (see "
                                "its error); nothing was trained")
    yield workdir, stop


def restore(spec: setup.Spec, workdir: str, mesh, restore_step: int | None, image_shape):
  """``(checkpointer, state, restored step or None)``: a fresh state (initial weights
  read only when there is nothing to resume), then the newest intact checkpoint, or
  ``restore_step``; newer (or damaged) checkpoints are set aside."""
  try:
    ckpt = checkpoint_lib.Checkpointer(workdir, spec.loop.checkpoint_every,
                                       spec.loop.keep_checkpoints, log=log)
    fresh = restore_step is None and not ckpt.all_steps()
    state = setup.new_state(spec, mesh, read_init=fresh, image_shape=tuple(image_shape))
    checkpoint_lib.check_writable(workdir, state)
    if restore_step is not None:
      state, restored = ckpt.restore(state, restore_step), restore_step
      note = "resuming from step {step}: newer checkpoints {moved} moved to {to}"
    else:
      state, restored = ckpt.restore_latest(state)
      note = "damaged checkpoints {moved} moved to {to}"
    moved = ckpt.set_aside_after(restored) if restored is not None else []
    if moved:
      log(note.format(step=restored, moved=moved, to=ckpt.set_aside_directory))
  except checkpoint_lib.CheckpointError as e:
    raise UsageError(str(e)) from e
  return ckpt, state, restored


def resume(spec: setup.Spec, workdir: str, checkpoints: str, restored: int | None,
           step: int, allow_config_change: bool) -> list[dict]:
  """Checks a resumed run's stored config, writes ``config.json``, and rolls
  ``metrics.jsonl`` back to ``step`` so that each (step, kind) appears once, as in an
  uninterrupted run; returns the kept records (process 0; [] elsewhere)."""
  if restored is not None:
    log(f"resumed from {checkpoints} at step {restored}")
    workdir_lib.check_config(workdir, spec.config, restored, allow_config_change, log=log,
                             record=jax.process_index() == 0)
  if jax.process_index() != 0:
    return []
  workdir_lib.write_config(workdir, spec.config)
  return metrics_lib.rollback_jsonl(os.path.join(workdir, "metrics.jsonl"), step, log=log)


def stopped_in_startup(stop: interrupt.StopSignal, describe: str = "") -> bool:
  """Whether a stop was asked during start-up on any process (all processes agree);
  ``describe``: what the input reads, logged first."""
  for line in describe.splitlines():
    log(line)
  if periodic.any_process(stop.received is not None):
    stop.received = stop.received or "a stop signal on another process"
    return True
  return False


def stop_in_startup(stop: interrupt.StopSignal, step: int, workdir: str,
                    writer: metrics_lib.MetricWriter, ckpt) -> dict:
  """Closes the writer and the checkpointer of a run stopped before its first step."""
  writer.close()
  ckpt.close()
  log(f"{stop.received} received during start-up: nothing was trained; the run in "
      f"{workdir} is at step {step}. Re-run the same command to start it")
  return {"step": step, "interrupted": True}


def log_window(window: periodic.MetricWindow, guard: periodic.NonFiniteGuard, state, lr,
               step: int, writer: metrics_lib.MetricWriter) -> dict:
  """Fetches the window's metrics (stopping on a non-finite value) and writes its train
  record."""
  steps, values, rate = window.fetch()
  guard.check(steps, values)
  record = periodic.train_record(values, rate, state, float(lr(step)))
  writer.write(step, "train", record)
  return record
