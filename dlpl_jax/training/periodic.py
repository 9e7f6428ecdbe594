"""The small pieces the training loop calls, one job each: the metric window and the
train record, progress, evaluation with its feature files, checkpoints, the
non-finite guard and the stop (a signal, agreed by every process, or ``stop_at``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from dlpl_jax.errors import RunError, log
from dlpl_jax.training import checkpoint as checkpoint_lib
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import metrics as metrics_lib
from dlpl_jax.training import workdir as workdir_lib

PROGRESS_EVERY_S = 30.0  # progress lines when stderr is not a terminal
EVAL_NAME = {"ema": "EMA", "student": "student"}


class NonFiniteLossError(RunError):
  """The loss or the params became NaN/inf; the run stopped without saving the bad state."""


@jax.jit
def _stack(per_step: list[dict]) -> dict:
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_step)


class MetricWindow:
  """The steps since the last log: their metrics stay on the device until the log
  fetches them, stacked, one array per metric; at most one step is in flight (an
  honest progress bar, a prompt stop on SIGTERM)."""

  def __init__(self):
    self.pending: list[tuple[int, dict]] = []
    self.restart_clock()

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))
    self.timed += 1
    if len(self.pending) > 1:
      jax.block_until_ready(self.pending[-2][1])

  def restart_clock(self) -> None:
    """Steps/s counts from now (after the compiling first step)."""
    self.started, self.timed = time.time(), 0

  def fetch(self) -> tuple[list[int], dict[str, np.ndarray], float]:
    """``(steps, {name: [n] values}, steps per second)`` of the window, which restarts.

    The list is padded to a power of two (repeating its last entry) before stacking, so
    that windows of any length compile a handful of programs, not one per length."""
    steps = [s for s, _ in self.pending]
    per_step = [m for _, m in self.pending]
    n = len(per_step)
    padded = per_step + [per_step[-1]] * ((1 << (n - 1).bit_length()) - n)
    values = {k: v[:n] for k, v in jax.device_get(_stack(padded)).items()}
    now = time.time()
    rate = self.timed / max(now - self.started, 1e-9)
    self.pending = []
    self.restart_clock()
    return steps, values, rate


def train_record(values: dict[str, np.ndarray], rate: float, state, lr: float) -> dict:
  """The train record of a window: the mean of each metric, steps/s, the learning rate,
  the marginal and the pseudo-label statistics of the counters since the last
  evaluation (all pseudo-labels, and the confident ones)."""
  host = jax.device_get({"marginal": state.marginal, "c": state.confusion,
                         "cm": state.confusion_masked})
  record = {k: float(np.mean(v)) for k, v in values.items()}
  record["train/steps_per_sec"] = rate
  record["train/lr"] = lr
  record["marginal"] = host["marginal"].tolist()
  record.update(metrics_lib.pseudo_label_stats(host["c"], "pseudo"))
  record.update(metrics_lib.pseudo_label_stats(host["cm"], "pseudo_masked"))
  return record


class Progress:
  """Progress of process 0: a tqdm bar on a terminal; elsewhere (logs, CI) a line every
  :data:`PROGRESS_EVERY_S` seconds and at the end. :meth:`say` prints a log line (above
  the bar, when there is one)."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self.total = total
    self.enabled = enabled
    self.bar = None
    self._printed = 0.0
    if enabled and jax.process_index() == 0 and sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, initial=initial, file=sys.stderr, unit="step",
                      dynamic_ncols=True, mininterval=0.5, smoothing=0.1,
                      bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                 "{rate_fmt}]{postfix}")

  def say(self, msg: str) -> None:
    if self.bar is not None:
      self.bar.write(f"[dlpl_jax] {msg}", file=sys.stderr)
    else:
      log(msg)

  def tick(self) -> None:
    if self.bar is not None:
      self.bar.update(1)

  def report(self, step: int, record: dict) -> None:
    """After a log: the bar's figures, or a progress line when one is due."""
    acc = record.get("pseudo/acc")
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{record['train/loss']:.3f}",
                           mask=f"{record['train/mask_rate']:.2f}",
                           pl_acc="-" if acc is None else f"{acc:.2f}", refresh=False)
    elif self.enabled and (time.time() - self._printed >= PROGRESS_EVERY_S
                           or step == self.total):
      log(progress_line(step, self.total, record))
      self._printed = time.time()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def progress_line(step: int, total: int, record: dict) -> str:
  """``step 20/120 (17%), 12.03 steps/s, ETA 8 s: loss 1.865, mask rate 0.26, ...``"""
  rate = record.get("train/steps_per_sec") or 0.0
  eta = (total - step) / rate if rate > 0 else float("inf")
  eta_s = ("?" if not math.isfinite(eta) else
           f"{eta / 3600:.1f} h" if eta >= 3600 else f"{eta / 60:.1f} min" if eta >= 60
           else f"{eta:.0f} s")
  acc = record.get("pseudo/acc")
  return (f"step {step}/{total} ({100 * step / total:.0f}%), {rate:.2f} steps/s, ETA {eta_s}: "
          f"loss {record['train/loss']:.3f}, mask rate {record['train/mask_rate']:.2f}, "
          f"pseudo-label acc {'-' if acc is None else f'{acc:.2f}'}")


def eval_record(ev: dict, state) -> dict:
  """The eval record: the evaluation (less the features) and the pseudo-label confusion
  matrices of the window that ends here."""
  host = jax.device_get({"c": state.confusion, "cm": state.confusion_masked})
  record = {k: v for k, v in ev.items() if k != "class_features"}
  record["pseudo/confusion"] = host["c"].astype(int).tolist()
  record["pseudo_masked/confusion"] = host["cm"].astype(int).tolist()
  return record


def evaluation(step: int, state, evaluate, writer: metrics_lib.MetricWriter,
               workdir: str) -> dict:
  """Evaluates, writes the eval record and the feature files; returns the record."""
  ev = evaluate(state)
  record = eval_record(ev, state)
  writer.write(step, "eval", record)
  write_features(workdir, step, ev)
  return record


def write_features(workdir: str, step: int, ev: dict) -> None:
  """``class_features.npz`` (the latest) and ``features/class_features_<step>.npz``: the
  class-mean features and per-class accuracy of an evaluation (process 0)."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.join(workdir, "features"), exist_ok=True)
  for path in (os.path.join(workdir, "class_features.npz"),
               os.path.join(workdir, "features", f"class_features_{step}.npz")):
    np.savez(path, step=step, class_means=ev["class_features"],
             per_class_acc=np.asarray(ev["eval/per_class"]))


def reset_counters(state, mesh):
  """The state with the pseudo-label counters of a new window (zeros)."""
  zeros = mesh_lib.replicate(np.zeros(state.confusion.shape, np.float32), mesh)
  return state.replace(confusion=zeros, confusion_masked=zeros)


def eval_line(step: int, ev: dict, train: dict, which: str) -> str:
  acc, imb = train.get("pseudo/acc"), train.get("pseudo/imbalance")
  return (f"step {step}: {EVAL_NAME[which]} test top-1 {ev['eval/top1']:.2f}%; since the last "
          f"evaluation: pseudo-label acc {'-' if acc is None else f'{acc:.3f}'}, imbalance "
          f"{'-' if imb is None else f'{imb:.1f}'}, mask rate {train['train/mask_rate']:.2f}")


class NonFiniteGuard:
  """Stops the run on a non-finite loss or params, naming the step and the last good
  checkpoint, and remembers the stop (``nonfinite.json``) so that re-running the same
  command from the same checkpoint warns that it will stop there again."""

  def __init__(self, workdir: str, ckpt: checkpoint_lib.Checkpointer,
               restored: int | None, config: dict):
    self.marker = workdir_lib.NonFiniteMarker(workdir)
    self.ckpt, self.restored, self.config = ckpt, restored, config

  def advice(self) -> str:
    steps = self.ckpt.all_steps()
    if not steps:
      return ("No checkpoint was written yet, so a re-run starts from scratch: change what "
              "diverged (for example a smaller --config.lr) or use another --workdir")
    return (f"Resume from an earlier checkpoint with --restore_step=K (kept: {steps}), or "
            "change what diverged (for example a smaller --config.lr, with "
            "--allow_config_change)")

  def warn_if_repeating(self) -> None:
    repeat = self.marker.repeats(self.restored, self.config)
    if repeat:
      log(f"warning: the last run from this "
          f"{'checkpoint' if self.restored else 'start'} with this config stopped on "
          f"non-finite values at step {repeat['step']} and will again. {self.advice()}")

  def check(self, steps: list[int], values: dict[str, np.ndarray]) -> None:
    for i, s in enumerate(steps):
      bad = [k for k in ("train/loss", "train/param_norm")
             if not math.isfinite(float(values[k][i]))]
      if bad:
        self.stop(s, f"non-finite {' and '.join(bad)} "
                     f"({', '.join(str(values[k][i]) for k in bad)})")

  def stop(self, step: int, what: str):
    if jax.process_index() == 0:
      self.marker.write(step, self.restored, self.config)
    latest = self.ckpt.latest_step()
    raise NonFiniteLossError(
        f"{what} at step {step}; stopped without saving. Last good checkpoint: "
        + (f"step {latest} in {self.ckpt.directory}" if latest is not None else "none")
        + f". {self.advice()}")

  def saved(self, step: int) -> None:
    """A good checkpoint past the remembered stop clears it."""
    m = self.marker.read()
    if m and step > m.get("step", 0) and jax.process_index() == 0:
      self.marker.clear()


def save_checkpoint(ckpt: checkpoint_lib.Checkpointer, step: int, state,
                    guard: NonFiniteGuard) -> None:
  """Saves ``state`` as ``step``; a non-finite state stops the run (the guard), a write
  that fails is a :class:`~dlpl_jax.errors.RunError` naming the last complete step."""
  try:
    ckpt.save(step, state, force=True)
  except checkpoint_lib.NonFiniteStateError as e:
    guard.stop(step, str(e))
  except checkpoint_lib.CheckpointError as e:
    raise RunError(f"{e}; training stopped. Last complete checkpoint: step "
                   f"{ckpt.latest_step()}") from e
  guard.saved(step)


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is True on any process (the same answer on every process; blocks
  until all processes ask). One process: ``flag``."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


class Stopper:
  """Whether to stop before the next step: ``stop_at`` reached, or a SIGINT/SIGTERM.

  Several processes: a signal reaches them at different steps, or only one of them, yet
  all must stop after the same step; otherwise one process would save (orbax
  collectives) while the others enter the next step, and both wait forever. Each call
  starts an all-process max of the local flags without waiting and returns the result
  of the one started by the previous call (done by then, like the step before it): all
  processes decide at the same step, one step after the signal.
  """

  def __init__(self, signal, mesh, stop_at: int | None, say=log):
    self.signal, self.stop_at, self.say = signal, stop_at, say
    self.planned = False
    self._vote = None
    if jax.process_count() > 1:
      self._sharding = NamedSharding(mesh, P("data"))
      self._n_local = len(mesh.local_devices)
      self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))

  def reached(self, step: int, last: bool) -> None:
    """After ``step``: ``stop_at`` reached (the same step on every process)."""
    if self.stop_at is not None and step >= self.stop_at and not last:
      self.signal.received = self.signal.received or f"stop_at={self.stop_at}"
      self.planned = True

  def __call__(self) -> bool:
    if self.planned:
      return True
    if jax.process_count() == 1:
      return self.signal.received is not None
    x = jax.make_array_from_process_local_data(
        self._sharding, np.full((self._n_local,), int(self.signal.received is not None),
                                np.int32))
    previous, self._vote = self._vote, self._max(x)
    if previous is None or not bool(previous):
      return False
    if self.signal.received is None:
      self.signal.received = "a stop signal on another process"
      self.say(f"{self.signal.received}: stopping after this step and saving a checkpoint")
    return True

  def after_loop(self, stopped: bool) -> bool:
    """Whether the run stops early: one process also counts a signal after the last step."""
    if jax.process_count() == 1:
      return stopped or self.signal.received is not None
    return stopped


def summary(step: int, total_steps: int, stopped: bool, method: str, evals: dict,
            train: dict) -> dict:
  """The run's summary: where it stands, the final and median test top-1 (the median of
  the last 20 evaluations, FixMatch's protocol), the final pseudo-label statistics."""
  ordered = [evals[s] for s in sorted(evals)]
  last20 = [r["eval/top1"] for r in ordered[-20:]]
  final_pl = (metrics_lib.pseudo_label_stats(ordered[-1]["pseudo/confusion"])
              if ordered and "pseudo/confusion" in ordered[-1] else {})
  return {
      "step": step,
      "total_steps": total_steps,
      "interrupted": stopped,
      "method": method,
      "final_top1": ordered[-1]["eval/top1"] if ordered else None,
      "median_last20_top1": float(np.median(last20)) if last20 else None,
      "num_evals": len(ordered),
      "final_pseudo_acc": final_pl.get("pseudo/acc"),
      "final_pseudo_imbalance": final_pl.get("pseudo/imbalance"),
      "final_mask_rate": train.get("train/mask_rate"),
      "final_marginal": train.get("marginal"),
  }


def write_summary(workdir: str, summary: dict, which: str) -> None:
  """``summary.json`` and, for a finished run, the closing lines of the log."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  if summary["interrupted"] or not summary["num_evals"]:
    return
  marginal = summary["final_marginal"] or []
  log(f"done: {summary['step']} steps; {EVAL_NAME[which]} test top-1 final "
      f"{summary['final_top1']:.2f}%, median of the last {min(summary['num_evals'], 20)} "
      f"evals {summary['median_last20_top1']:.2f}%"
      + (f"; marginal min/max {min(marginal):.3f}/{max(marginal):.3f}" if marginal else ""))
  shown = os.path.relpath(workdir)
  shown = workdir if shown.startswith("..") else shown
  log(f"results in {shown}: summary.json, metrics.jsonl, tensorboard/ "
      f"(tensorboard --logdir {shown}); plots: make analyze WORKDIR={shown}")


class Stopwatch:
  """Host seconds per part of the loop (dispatching the step, waiting for the device,
  logging, evaluating, checkpointing), from the step after the compiling first one: what
  the loop adds to the step, in ``summary.json`` (:meth:`report`)."""

  def __init__(self):
    self.seconds = collections.Counter()
    self.since = time.perf_counter()

  @contextlib.contextmanager
  def __call__(self, part: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[part] += time.perf_counter() - t

  def reset(self) -> None:
    self.seconds.clear()
    self.since = time.perf_counter()

  def report(self) -> dict[str, float]:
    """``{"loop": seconds since the reset, part: seconds, ...}``."""
    return {"loop": round(time.perf_counter() - self.since, 4),
            **{k: round(v, 4) for k, v in self.seconds.items()}}
