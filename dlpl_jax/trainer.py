"""The training loop: data on the device, the jitted step, evaluation, metrics,
checkpoints, resume, and clean stops (non-finite loss, SIGTERM/SIGINT).

``train_and_evaluate(config, workdir)`` is all ``main`` calls; tests and notebooks call
it too, optionally with their own :class:`~dlpl_jax.input_pipeline.SSLData`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from dlpl_jax import checkpoint as checkpoint_lib
from dlpl_jax import configs
from dlpl_jax import data as data_lib
from dlpl_jax import input_pipeline
from dlpl_jax import metrics as metrics_lib
from dlpl_jax import train


class NonFiniteLossError(RuntimeError):
  """The loss became NaN/inf; the run stopped without saving the bad state."""


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"[dlpl_jax] {msg}", file=sys.stderr, flush=True)


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, _frame):
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _progress(total: int, initial: int):
  if jax.process_index() != 0:
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  tty = sys.stderr.isatty()
  return tqdm(total=total, initial=initial, file=sys.stderr, unit="step", dynamic_ncols=True,
              mininterval=0.5 if tty else 30.0, smoothing=0.1,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                         "{rate_fmt}]{postfix}" if tty else None)


def _previous_evals(workdir: str) -> dict[int, dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  return {r["step"]: r for r in metrics_lib.read_jsonl(path) if r.get("kind") == "eval"}


def _check_divisible(config, n_devices: int) -> None:
  for name, value in (("batch_size", config.batch_size),
                      ("batch_size * mu", config.batch_size * config.mu),
                      ("eval_batch_size", config.eval_batch_size)):
    if value % n_devices:
      raise ValueError(f"{name} = {value} must be divisible by the {n_devices} devices")


def train_and_evaluate(config, workdir: str,
                       data: input_pipeline.SSLData | None = None,
                       stop_at: int | None = None) -> dict:
  """Trains (or resumes) a FixMatch/DebiasPL run in ``workdir`` and evaluates it.

  Args:
    config: a ConfigDict extending :func:`dlpl_jax.configs.get_base_config`.
    workdir: run folder: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``,
      ``config.json``, ``class_features.npz``, ``summary.json``.
    data: optional in-memory splits; default reads the config's TFDS dataset.
    stop_at: stop after this step with a checkpoint, as if interrupted (for a job with
      a time budget, and for the resume test); the schedule still spans total_steps.

  Returns:
    The summary dict (also written to ``summary.json``); ``interrupted`` is True when a
    signal stopped the run early (a checkpoint was saved; re-run to resume).

  Raises:
    NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
  """
  configs.validate(config)
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  mesh = train.make_mesh()
  _check_divisible(config, mesh.size)
  _log(f"devices: {mesh.size} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
       f"{jax.process_count()} process(es)")
  if not config.in_memory and config.lt.enabled:
    raise ValueError("in_memory=False streams the whole training split as the unlabeled "
                     "set; the long-tailed protocols need in_memory=True")
  if data is None:
    data = input_pipeline.load(config)
  _log(f"data: {data.describe(config.num_classes)}")
  if jax.default_backend() == "cpu" and config.model.startswith("wrn") and (
      config.total_steps > 10_000):
    _log(f"note: {config.total_steps} steps of {config.model} on a CPU take weeks (seconds "
         "per step); this config is meant for a GPU/TPU. For a CPU run use a ':smoke' "
         "variant or experiments/study_cpu.py")

  model = train.build_model(config)
  cfg = train.StepConfig.from_config(config)
  state = train.create_train_state(config, model, data.x_l.shape[1:])
  state = train.replicate(jax.device_get(state), mesh)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
  state, restored = ckpt.restore_latest(state)
  if restored is not None:
    _log(f"resumed from {ckpt.directory} at step {restored}")
  step = int(jax.device_get(state.step))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))

  if config.in_memory:
    device_data = train.replicate({"x_l": data.x_l, "y_l": data.y_l, "x_u": data.x_u,
                                   "y_u": data.y_u}, mesh)
    next_step = lambda st: train.jit_train_step(st, device_data, model=model, cfg=cfg,
                                                mesh=mesh)
  else:  # unlabeled batches streamed through tf.data (datasets that do not fit)
    labeled = train.replicate({"x_l": data.x_l, "y_l": data.y_l}, mesh)
    unlabeled = data_lib.stream(config.dataset, "train", config.batch_size * config.mu,
                                seed=config.seed + step, data_dir=config.data_dir or None)
    batch_sharding = NamedSharding(mesh, P("data"))

    def next_step(st):
      u = next(unlabeled)
      u = {"image": u["image"], "label": u["label"].astype(np.int32)}
      u = jax.tree_util.tree_map(
          lambda x: jax.make_array_from_callback(x.shape, batch_sharding, lambda i: x[i]), u)
      return train.jit_train_step_streamed(st, labeled, u, model=model, cfg=cfg, mesh=mesh)
    _log("unlabeled batches streamed from TFDS (tf.data); a resumed run reshuffles")
  x_test, y_test = train.pad_test_set(data.x_test, data.y_test, config.eval_batch_size)
  x_test, y_test = train.replicate((x_test, y_test), mesh)
  lr_fn = train.learning_rate_schedule(config)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  evals = _previous_evals(workdir)
  pending: list[tuple[int, dict]] = []
  zeros_cc = lambda: train.replicate(np.zeros((config.num_classes,) * 2, np.float32), mesh)
  t_window, n_window = time.time(), 0

  def flush() -> dict:
    """Fetches the steps' metrics since the last flush; stops on a non-finite loss."""
    nonlocal pending, t_window, n_window
    if not pending:
      return {}
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      if not math.isfinite(float(m["train/loss"])):
        raise NonFiniteLossError(
            f"non-finite loss ({m['train/loss']}) at step {s}; stopped without saving. "
            f"Last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}")
    out = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    now = time.time()
    out["train/steps_per_sec"] = n_window / max(now - t_window, 1e-9)
    t_window, n_window = now, 0
    pending = []
    return out

  bar = _progress(config.total_steps, step) if config.progress else None
  compiled_at = None
  with _StopSignal() as stop:
    try:
      while step < config.total_steps and stop.received is None:
        state, m = next_step(state)
        step += 1
        n_window += 1
        pending.append((step, m))
        if len(pending) > 1:  # at most one step in flight: an honest progress bar and
          jax.block_until_ready(pending[-2][1])  # a prompt stop on SIGTERM
        if compiled_at is None:
          jax.block_until_ready(m)
          compiled_at = time.time()
          _log(f"first step (compile + run) took {compiled_at - t_start:.1f}s since start")
          t_window, n_window = time.time(), 0
        if bar is not None:
          bar.update(1)
        last = step == config.total_steps
        do_log = step % config.log_every == 0 or last
        do_eval = step % config.eval_every == 0 or last
        do_ckpt = step % config.checkpoint_every == 0 or last
        if stop_at is not None and step >= stop_at and not last:
          stop.received = f"stop_at={stop_at}"
        if do_log or do_eval or do_ckpt:
          scalars = flush()
          if do_log:
            host = jax.device_get({"marginal": state.marginal, "c": state.confusion,
                                   "cm": state.confusion_masked})
            record = dict(scalars)
            record["train/lr"] = float(lr_fn(step))
            record["marginal"] = host["marginal"].tolist()
            record.update(metrics_lib.pseudo_label_stats(host["c"], "pseudo"))
            record.update(metrics_lib.pseudo_label_stats(host["cm"], "pseudo_masked"))
            writer.write(step, "train", record)
            if bar is not None:
              bar.set_postfix(loss=f"{record['train/loss']:.3f}",
                              mask=f"{record['train/mask_rate']:.2f}",
                              pl_acc=f"{record['pseudo/acc_all']:.2f}", refresh=False)
          if do_eval:
            ev = train.evaluate(state, x_test, y_test, model=model,
                                num_classes=config.num_classes, batch=config.eval_batch_size,
                                mesh=mesh)
            host = jax.device_get({"marginal": state.marginal, "c": state.confusion,
                                   "cm": state.confusion_masked})
            record = {k: v for k, v in ev.items() if k != "class_features"}
            record["marginal"] = host["marginal"].tolist()
            record["pseudo/confusion"] = host["c"].astype(int).tolist()
            record["pseudo_masked/confusion"] = host["cm"].astype(int).tolist()
            record.update(metrics_lib.pseudo_label_stats(host["c"], "pseudo"))
            record.update(metrics_lib.pseudo_label_stats(host["cm"], "pseudo_masked"))
            writer.write(step, "eval", record)
            evals[step] = record
            if jax.process_index() == 0:  # latest, plus one small file per evaluation
              os.makedirs(os.path.join(workdir, "features"), exist_ok=True)
              for path in (os.path.join(workdir, "class_features.npz"),
                           os.path.join(workdir, "features", f"class_features_{step}.npz")):
                np.savez(path, step=step, class_means=ev["class_features"],
                         per_class_acc=np.asarray(ev["eval/per_class"]))
            state = state.replace(confusion=zeros_cc(), confusion_masked=zeros_cc())
            msg = (f"step {step}: EMA test top-1 {ev['eval/top1']:.2f}%, pseudo-label acc "
                   f"{record['pseudo/acc']:.3f}, imbalance {record['pseudo/imbalance']:.1f}")
            (bar.write(f"[dlpl_jax] {msg}", file=sys.stderr) if bar is not None else _log(msg))
          if do_ckpt:
            ckpt.save(step, state, force=True)
      if stop.received is not None:
        flush()
        ckpt.save(step, state, force=True)
        ckpt.wait()
        _log(f"{stop.received} received: checkpoint saved at step {step} in "
             f"{ckpt.directory}; re-run the same command to resume")
    finally:
      if bar is not None:
        bar.close()
      ckpt.close()
      writer.close()

  ordered = [evals[s] for s in sorted(evals)]
  last20 = [r["eval/top1"] for r in ordered[-20:]]
  summary = {
      "step": step,
      "total_steps": config.total_steps,
      "interrupted": stop.received is not None,
      "method": config.method,
      "final_top1": ordered[-1]["eval/top1"] if ordered else None,
      "median_last20_top1": float(np.median(last20)) if last20 else None,
      "num_evals": len(ordered),
      "final_pseudo_acc": ordered[-1].get("pseudo/acc") if ordered else None,
      "final_pseudo_imbalance": ordered[-1].get("pseudo/imbalance") if ordered else None,
      "wall_seconds_this_invocation": time.time() - t_start,
      "device": f"{mesh.size} x {jax.devices()[0].device_kind}",
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    if not summary["interrupted"]:
      _log(f"done: {step} steps; EMA test top-1 final {summary['final_top1']:.2f}%, "
           f"median of the last {len(last20)} evals {summary['median_last20_top1']:.2f}%")
  return summary
