"""The training loop: data on the device, the jitted step, evaluation, metrics,
checkpoints, resume, and clean stops (non-finite loss, SIGTERM/SIGINT).

``train_and_evaluate(config, workdir)`` is all ``main`` calls; tests and notebooks call
it too, optionally with their own :class:`~dlpl_jax.input_pipeline.SSLData`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import zlib

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from dlpl_jax import checkpoint as checkpoint_lib
from dlpl_jax import configs
from dlpl_jax import data as data_lib
from dlpl_jax import input_pipeline
from dlpl_jax import interrupt
from dlpl_jax import metrics as metrics_lib
from dlpl_jax import train
from dlpl_jax import workdir as workdir_lib
from dlpl_jax.errors import RunError, UsageError


class NonFiniteLossError(RunError):
  """The loss or the params became NaN/inf; the run stopped without saving the bad state."""


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"[dlpl_jax] {msg}", file=sys.stderr, flush=True)


# Measured speeds behind the CPU guard (docs/performance.md): the WRN-28-2 train step of
# 960 images (batch 64, mu 7) takes 11.9 s on a 2-vCPU CPU and runs 86-89 steps/s on one
# H100 in bfloat16. WRN-28-8 has about 16x the convolution work of WRN-28-2.
# ResNet-50 at 224: 1.06 s for a 10-image step (B=2, mu=1, 2 views, float32) measured
# with make bench on a 2-vCPU CPU; its H100 rate (3,000 images/s) is an assumption, not
# a measurement.
_CPU_S_PER_IMAGE = {"wrn28_2": 11.9 / 960, "wrn28_8": 16 * 11.9 / 960, "resnet50": 1.06 / 10}
_H100_S_PER_IMAGE = {"wrn28_2": 1 / (87 * 960), "wrn28_8": 16 / (87 * 960),
                     "resnet50": 1 / 3000}
CPU_LIMIT_HOURS = 12.0
PROGRESS_EVERY_S = 30.0  # progress lines when stderr is not a terminal
_EVAL_NAME = {"ema": "EMA", "student": "student"}


def runtime_estimate(config) -> tuple[float, float] | None:
  """``(cpu_hours, h100_hours)`` for the config's model and steps, or None (small model)."""
  if config.model not in _CPU_S_PER_IMAGE:
    return None
  views = configs.recipe_option(config, "num_views")
  images = config.total_steps * config.batch_size * (1 + 2 * views * config.mu)
  return (images * _CPU_S_PER_IMAGE[config.model] / 3600,
          images * _H100_S_PER_IMAGE[config.model] / 3600)


def check_cpu_budget(config, backend: str, allow_cpu: bool) -> None:
  """Refuses to start, on a CPU, a run that needs a GPU/TPU (unless ``allow_cpu``)."""
  est = runtime_estimate(config)
  if backend != "cpu" or est is None or est[0] <= CPU_LIMIT_HOURS:
    return
  cpu_h, gpu_h = est
  msg = (f"this config trains {config.model} for {config.total_steps:,} steps: about "
         f"{gpu_h:.1f} h on one H100 in bfloat16, but about {cpu_h / 24:,.0f} days on this "
         "CPU-only host (scaled from a step measured on 2 vCPUs"
         + ("; the H100 figure from an assumed 3,000 images/s" if config.model == "resnet50"
            else "") + "). It "
         "needs a GPU/TPU. Here, try "
         "the one-minute smoke run (make train CONFIG=experiments/cifar10_4shot.py:smoke) "
         "or the CPU study (make study)")
  if not allow_cpu:
    raise UsageError(msg + "; --allow_cpu starts it anyway")
  _log("note: " + msg)


def _progress(total: int, initial: int):
  """A tqdm bar on a terminal; None elsewhere (logs, CI), where progress lines are
  written at the log steps instead (:func:`_progress_line`)."""
  if jax.process_index() != 0 or not sys.stderr.isatty():
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, file=sys.stderr, unit="step", dynamic_ncols=True,
              mininterval=0.5, smoothing=0.1,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                         "{rate_fmt}]{postfix}")


def _progress_line(step: int, total: int, record: dict) -> str:
  rate = record.get("train/steps_per_sec") or 0.0
  eta = (total - step) / rate if rate > 0 else float("inf")
  eta_s = ("?" if not math.isfinite(eta) else
           f"{eta / 3600:.1f} h" if eta >= 3600 else f"{eta / 60:.1f} min" if eta >= 60
           else f"{eta:.0f} s")
  acc = record.get("pseudo/acc")
  return (f"step {step}/{total} ({100 * step / total:.0f}%), {rate:.2f} steps/s, ETA {eta_s}: "
          f"loss {record['train/loss']:.3f}, mask rate {record['train/mask_rate']:.2f}, "
          f"pseudo-label acc {'-' if acc is None else f'{acc:.2f}'}")


def _check_divisible(config, n_devices: int) -> None:
  for name, value in (("batch_size", config.batch_size),
                      ("batch_size * mu", config.batch_size * config.mu),
                      ("eval_batch_size", config.eval_batch_size)):
    if value % n_devices:
      raise UsageError(f"bad config: {name} = {value} must be divisible by the {n_devices} "
                       "devices")


def _image_shape(config, data) -> tuple[int, ...]:
  if configs.input_kind(config) == "imagenet":
    return (config.imagenet.crop_size,) * 2 + (3,)
  if data is not None:
    return tuple(data.x_l.shape[1:])
  if config.dataset in configs.KNOWN_DATASETS:
    return (32, 32, 3)
  return None


def _nonfinite_advice(ckpt) -> str:
  steps = ckpt.all_steps()
  if not steps:
    return ("No checkpoint was written yet, so a re-run starts from scratch: change what "
            "diverged (for example a smaller --config.lr) or use another --workdir")
  return (f"Resume from an earlier checkpoint with --restore_step=K (kept: {steps}), or change "
          "what diverged (for example a smaller --config.lr, with --allow_config_change)")


def _stop_in_startup(stop) -> bool:
  """Whether a stop was asked on any process before training (all processes agree)."""
  if _any_process(stop.received is not None):
    stop.received = stop.received or "a stop signal on another process"
    return True
  return False


def _check_same_data(data) -> None:
  """Multi-process: every process must hold the same in-memory arrays (each samples its
  part of the global batch from its own copy with the same key). Different copies (a
  different data folder or dataset version on one host) would train silently on a mix,
  so a crc32 of each array is compared across processes; a difference is a UsageError
  on every process."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  names = data._fields
  local = np.array([zlib.crc32(np.ascontiguousarray(a).view(np.uint8)) ^ a.size
                    for a in data], np.uint32)
  everyone = np.asarray(multihost_utils.process_allgather(local))  # [processes, arrays]
  differ = [n for n, col in zip(names, everyone.T) if len(set(col.tolist())) > 1]
  if differ:
    raise UsageError(
        f"the processes loaded different data ({', '.join(differ)} differ between "
        "processes): give every process the same dataset version and data folder")


def unlabeled_stream(config, step: int):
  """This process's unlabeled batches for the streaming path (``in_memory=False``).

  Process i of n reads the i-th of n disjoint parts of the training split
  (:func:`dlpl_jax.data.stream` with ``shard=(i, n)``) in batches of
  ``batch_size * mu / n``: together the processes' batches make one global batch.
  The shuffle seed depends on the step, so a resumed run reads a new order.

  Returns:
    An iterator of ``{'image': uint8 [B*mu/n, H, W, C], 'label': int [B*mu/n]}``.
  """
  n = jax.process_count()
  return data_lib.stream(config.dataset, "train", config.batch_size * config.mu // n,
                         seed=config.seed + step, data_dir=config.data_dir or None,
                         shard=(jax.process_index(), n))


def _imagenet_input(config, step: int, mesh, model, cfg):
  """The ImageNet input (:mod:`dlpl_jax.imagenet`): labeled and unlabeled views streamed
  by this process's tf.data pipelines, evaluation streamed from the validation split.

  Returns:
    ``(next_step, run_eval)``: ``next_step(state) -> (state, metrics)`` and
    ``run_eval(state) -> eval dict``.
  """
  from dlpl_jax import imagenet  # pylint: disable=g-import-not-at-top
  n, i = jax.process_count(), jax.process_index()
  found = imagenet.num_classes(config)
  if found != config.num_classes:
    raise UsageError(f"{config.imagenet.train_name} has {found} classes but "
                     f"config.num_classes = {config.num_classes}")
  source, clip = imagenet.labeled_source(config)
  labeled = imagenet.labeled_stream(config, source, step, (i, n))
  unlabeled = imagenet.unlabeled_stream(config, step, (i, n),
                                        clip if cfg.clip_fallback > 0 else None)
  sharding = NamedSharding(mesh, P("data"))
  view_sharding = NamedSharding(mesh, P(None, "data"))

  def put(tree, views=()):
    return {k: jax.make_array_from_process_local_data(
        view_sharding if k in views else sharding, np.asarray(v)) for k, v in tree.items()}

  def next_step(st):
    lab = next(labeled)
    unl = next(unlabeled)
    return train.jit_train_step_views(st, put(lab), put(unl, ("weak", "strong")),
                                      model=model, cfg=cfg, mesh=mesh)

  def run_eval(st):
    return train.evaluate_batches(st, imagenet.eval_batches(config, (i, n)), model=model,
                                  num_classes=config.num_classes,
                                  batch=config.eval_batch_size, mesh=mesh,
                                  params=configs.eval_params(config))
  what = (f"labeled {source.name} ({config.imagenet.split}"
          + (f", {len(source.file_names)} images" if source.file_names is not None else "")
          + f"), unlabeled {config.imagenet.train_name} train"
          + (f" less the pseudo-labeled images, CLIP fallback >= {cfg.clip_fallback}"
             if clip is not None else ""))
  _log(f"data: {what}; views streamed by tf.data"
       + (", a disjoint part per process" if n > 1 else "") + "; a resumed run reshuffles")
  return next_step, run_eval


def _stopped_in_startup(stop, step, workdir, writer, ckpt) -> dict:
  writer.close()
  ckpt.close()
  _log(f"{stop.received} received during start-up: nothing was trained; the run in "
       f"{workdir} is at step {step}. Re-run the same command to start it")
  return {"step": step, "interrupted": True}


def _any_process(flag: bool) -> bool:
  """Whether ``flag`` is True on any process (the same answer on every process; blocks
  until all processes ask). Single process: ``flag``."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


class _StopVote:
  """Multi-process: a stop asked on any process (SIGTERM/SIGINT reach the processes at
  different steps, or only one of them) stops every process after the same step;
  otherwise one process would save (orbax collectives) while the others enter the next
  train step, and both wait for each other forever.

  Each call starts an all-process max of the local flags without waiting and returns the
  result of the one started by the previous call (done by then, like the step before it):
  all processes decide at the same step, one step after the signal, with one step still
  in flight.
  """

  def __init__(self, mesh):
    self._sharding = NamedSharding(mesh, P("data"))
    self._n_local = len(mesh.local_devices)
    self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))
    self._previous = None

  def __call__(self, local: bool) -> bool:
    x = jax.make_array_from_process_local_data(
        self._sharding, np.full((self._n_local,), int(local), np.int32))
    previous, self._previous = self._previous, self._max(x)
    return previous is not None and bool(previous)


@jax.jit
def _stack(per_step: list[dict]) -> dict:
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_step)


def _fetch_metrics(per_step: list[dict]) -> dict[str, np.ndarray]:
  """The metrics of n steps, ``[{name: scalar}] * n``, on the host as ``{name: [n]}``,
  stacked on the device in one call: a log fetches one array per metric instead of one
  per metric and step (768 transfers every 128 steps: 4.9 ms against 0.3 ms on a 2-vCPU
  CPU). The list is padded to a power of two (repeating its last entry), so that
  windows of any length compile a handful of programs, not one per length."""
  n = len(per_step)
  padded = list(per_step) + [per_step[-1]] * ((1 << (n - 1).bit_length()) - n)
  return {k: v[:n] for k, v in jax.device_get(_stack(padded)).items()}


def _pseudo_summary(record: dict) -> str:
  acc = record.get("pseudo/acc")
  imb = record.get("pseudo/imbalance")
  return (f"pseudo-label acc {'-' if acc is None else f'{acc:.3f}'}, imbalance "
          f"{'-' if imb is None else f'{imb:.1f}'}")


def train_and_evaluate(config, workdir: str,
                       data: input_pipeline.SSLData | None = None,
                       stop_at: int | None = None, *,
                       allow_config_change: bool = False,
                       restore_step: int | None = None,
                       allow_cpu: bool = True,
                       stop: interrupt.StopSignal | None = None) -> dict:
  """Trains (or resumes) a FixMatch/DebiasPL run in ``workdir`` and evaluates it.

  Args:
    config: a ConfigDict extending :func:`dlpl_jax.configs.get_base_config`.
    workdir: run folder: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``,
      ``config.json``, ``class_features.npz``, ``features/``, ``summary.json``.
    data: optional in-memory splits; default reads the config's TFDS dataset.
    stop_at: stop after this step with a checkpoint, as if interrupted (for a job with
      a time budget, and for the resume test); the schedule still spans total_steps.
    allow_config_change: resume a stored run although its config differs in keys that
      change training (recorded in ``config_changes.jsonl``); without it that is an error.
    restore_step: resume from this checkpoint step instead of the latest; newer
      checkpoints are moved to ``checkpoints/set_aside/`` (nothing is deleted).
    allow_cpu: start a run that needs days on a CPU-only host (the command line's
      default is False; see :func:`check_cpu_budget`).
    stop: the SIGINT/SIGTERM handler, when the caller installed it earlier (the command
      line does, so a signal during start-up is handled too); default: installed here.

  Returns:
    The summary dict (also written to ``summary.json``); ``interrupted`` is True when a
    signal stopped the run early (a checkpoint was saved; re-run to resume).

  Raises:
    UsageError: the config, data or workdir cannot be used as given (nothing trained).
    NonFiniteLossError: the loss or params became NaN/inf (the last good checkpoint,
      finite by construction, is kept).
    RunError: a checkpoint could not be written.
  """
  configs.validate(config, check_files=False)  # init_checkpoint: read on a fresh start only
  t_start = time.time()
  own_stop = stop is None
  stop = stop or interrupt.StopSignal()
  if own_stop:
    stop.__enter__()
  lock = None
  try:
    error = None
    try:
      workdir = workdir_lib.prepare(workdir)
      if jax.process_index() == 0:
        lock = workdir_lib.Lock(workdir, log=_log).acquire()
    except UsageError as e:
      error = e
    if _any_process(error is not None):  # every process stops, not only the one that failed
      raise error or UsageError(f"another process cannot use the workdir {workdir} (see its "
                                "error); nothing was trained")
    return _train(config, workdir, data, stop_at, allow_config_change, restore_step,
                  allow_cpu, stop, t_start)
  finally:
    if lock is not None:
      lock.release()
    if own_stop:
      stop.__exit__(None, None, None)


def _train(config, workdir, data, stop_at, allow_config_change, restore_step, allow_cpu,
           stop, t_start) -> dict:
  mesh = train.make_mesh()
  _check_divisible(config, mesh.size)
  check_cpu_budget(config, jax.default_backend(), allow_cpu)
  _log(f"devices: {mesh.size} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
       f"{jax.process_count()} process(es)")
  image_shape = _image_shape(config, data)
  if image_shape is None:  # an unknown dataset: read it first to learn the image shape
    data = input_pipeline.load(config)
    image_shape = tuple(data.x_l.shape[1:])

  # The state, restored before the data is read: a damaged or mismatched checkpoint and a
  # changed config are reported in seconds.
  model = train.build_model(config)
  cfg = train.StepConfig.from_config(config)
  try:
    ckpt = checkpoint_lib.Checkpointer(workdir, config.checkpoint_every,
                                       config.keep_checkpoints, log=_log)
    # A run that resumes never reads init_checkpoint (its checkpoint replaces those
    # weights, and the file may have moved since the run started).
    fresh = restore_step is None and not ckpt.all_steps()
    if fresh:
      configs.validate(config)
    state = train.create_train_state(config, model, image_shape, read_init=fresh)
    state = train.replicate(jax.device_get(state), mesh)
    checkpoint_lib.check_writable(workdir, state)
    if restore_step is not None:
      state = ckpt.restore(state, restore_step)
      restored = restore_step
      moved = ckpt.set_aside_after(restore_step)
      if moved:
        _log(f"resuming from step {restore_step}: newer checkpoints {moved} moved to "
             f"{ckpt.set_aside_directory}")
    else:
      state, restored = ckpt.restore_latest(state)
      if restored is not None:  # damaged newer steps (reported) must not shadow new saves
        moved = ckpt.set_aside_after(restored)
        if moved:
          _log(f"damaged checkpoints {moved} moved to {ckpt.set_aside_directory}")
  except checkpoint_lib.CheckpointError as e:
    raise UsageError(str(e)) from e
  if restored is not None:
    _log(f"resumed from {ckpt.directory} at step {restored}")
    workdir_lib.check_config(workdir, config, restored, allow_config_change, log=_log,
                             record=jax.process_index() == 0)
  step = int(jax.device_get(state.step))
  marker = workdir_lib.NonFiniteMarker(workdir)
  repeat = marker.repeats(restored, config)
  if repeat:
    _log(f"warning: the last run from this {'checkpoint' if restored else 'start'} with this "
         f"config stopped on non-finite values at step {repeat['step']} and will again. "
         f"{_nonfinite_advice(ckpt)}")
  records = []
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
    # metrics.jsonl and TensorBoard hold each (step, kind) once, as an uninterrupted run:
    # records after the restored step are dropped (they will be written again).
    records = metrics_lib.rollback_jsonl(os.path.join(workdir, "metrics.jsonl"), step,
                                         log=_log)
  writer = metrics_lib.MetricWriter(
      workdir, enabled=jax.process_index() == 0,
      class_names=metrics_lib.class_names(config.dataset, config.num_classes))
  writer.rebuild(records)
  evals = {r["step"]: r for r in records if r.get("kind") == "eval"}

  if _stop_in_startup(stop):
    return _stopped_in_startup(stop, step, workdir, writer, ckpt)
  imagenet_input = configs.input_kind(config) == "imagenet"
  if data is None and not imagenet_input:
    data = input_pipeline.load(config)
  if not imagenet_input:
    _log(f"data: {data.describe(config.num_classes)}")
    _check_same_data(data)
  if _stop_in_startup(stop):
    return _stopped_in_startup(stop, step, workdir, writer, ckpt)

  eval_which = configs.eval_params(config)
  if imagenet_input:
    next_step, run_eval = _imagenet_input(config, step, mesh, model, cfg)
  elif config.in_memory:
    device_data = train.replicate({"x_l": data.x_l, "y_l": data.y_l, "x_u": data.x_u,
                                   "y_u": data.y_u}, mesh)
    next_step = lambda st: train.jit_train_step(st, device_data, model=model, cfg=cfg,
                                                mesh=mesh)
  else:  # unlabeled batches streamed through tf.data (datasets that do not fit)
    labeled = train.replicate({"x_l": data.x_l, "y_l": data.y_l}, mesh)
    unlabeled = unlabeled_stream(config, step)
    batch_sharding = NamedSharding(mesh, P("data"))

    def next_step(st):
      u = next(unlabeled)  # this process's part of the global batch
      u = {"image": u["image"], "label": u["label"].astype(np.int32)}
      u = jax.tree_util.tree_map(
          lambda x: jax.make_array_from_process_local_data(batch_sharding, x), u)
      return train.jit_train_step_streamed(st, labeled, u, model=model, cfg=cfg, mesh=mesh)
    _log("unlabeled batches streamed from TFDS (tf.data"
         + (", a disjoint part of the split per process" if jax.process_count() > 1 else "")
         + "); a resumed run reshuffles")
  if not imagenet_input:
    x_test, y_test = train.pad_test_set(data.x_test, data.y_test, config.eval_batch_size)
    x_test, y_test = train.replicate((x_test, y_test), mesh)
    run_eval = lambda st: train.evaluate(st, x_test, y_test, model=model,  # noqa: E731
                                         num_classes=config.num_classes,
                                         batch=config.eval_batch_size, mesh=mesh,
                                         params=eval_which)
  lr_fn = train.learning_rate_schedule(config)
  pending: list[tuple[int, dict]] = []
  zeros_cc = lambda: train.replicate(np.zeros((config.num_classes,) * 2, np.float32), mesh)
  t_window, n_window = time.time(), 0

  def flush() -> dict:
    """Fetches the steps' metrics since the last flush; stops on a non-finite value."""
    nonlocal pending, t_window, n_window
    if not pending:
      return {}
    stacked = _fetch_metrics([m for _, m in pending])  # {name: [n]}
    for i, (s, _) in enumerate(pending):
      bad = [k for k in ("train/loss", "train/param_norm")
             if not math.isfinite(float(stacked[k][i]))]
      if bad:
        nonfinite(s, f"non-finite {' and '.join(bad)} "
                     f"({', '.join(str(stacked[k][i]) for k in bad)})")
    out = {k: float(np.mean(v)) for k, v in stacked.items()}
    now = time.time()
    out["train/steps_per_sec"] = n_window / max(now - t_window, 1e-9)
    t_window, n_window = now, 0
    pending = []
    return out

  def nonfinite(at_step: int, what: str):
    if jax.process_index() == 0:
      marker.write(at_step, restored, config)
    latest = ckpt.latest_step()
    raise NonFiniteLossError(
        f"{what} at step {at_step}; stopped without saving. Last good checkpoint: "
        + (f"step {latest} in {ckpt.directory}" if latest is not None else "none")
        + f". {_nonfinite_advice(ckpt)}")

  def log_train(at_step: int, scalars: dict) -> dict:
    host = jax.device_get({"marginal": state.marginal, "c": state.confusion,
                           "cm": state.confusion_masked})
    record = dict(scalars)
    record["train/lr"] = float(lr_fn(at_step))
    record["marginal"] = host["marginal"].tolist()
    record.update(metrics_lib.pseudo_label_stats(host["c"], "pseudo"))
    record.update(metrics_lib.pseudo_label_stats(host["cm"], "pseudo_masked"))
    writer.write(at_step, "train", record)
    return record

  def save(at_step: int):
    try:
      ckpt.save(at_step, state, force=True)
    except checkpoint_lib.NonFiniteStateError as e:
      nonfinite(at_step, str(e))
    except checkpoint_lib.CheckpointError as e:
      raise RunError(f"{e}; training stopped. Last complete checkpoint: step "
                     f"{ckpt.latest_step()}") from e
    m = marker.read()
    if m and at_step > m.get("step", 0) and jax.process_index() == 0:
      marker.clear()

  bar = _progress(config.total_steps, step) if config.progress else None
  say = lambda msg: (bar.write(f"[dlpl_jax] {msg}", file=sys.stderr) if bar is not None
                     else _log(msg))
  compiled_at = None
  t_printed = 0.0
  last_record: dict = {}
  vote = _StopVote(mesh) if jax.process_count() > 1 else None
  planned = False  # stop_at reached (the same step on every process)
  stopped = False  # the loop ended early: a checkpoint is saved below

  def should_stop() -> bool:
    if planned:
      return True
    if vote is None:
      return stop.received is not None
    if vote(stop.received is not None):
      if stop.received is None:
        stop.received = "a stop signal on another process"
        say(f"{stop.received}: stopping after this step and saving a checkpoint")
      return True
    return False

  try:
    while step < config.total_steps:
      if should_stop():
        stopped = True
        break
      state, m = next_step(state)
      step += 1
      n_window += 1
      pending.append((step, m))
      if len(pending) > 1:  # at most one step in flight: an honest progress bar and
        jax.block_until_ready(pending[-2][1])  # a prompt stop on SIGTERM
      if compiled_at is None:
        jax.block_until_ready(m)
        compiled_at = time.time()
        say(f"first step (compile + run) took {compiled_at - t_start:.1f}s since start")
        t_window, n_window = time.time(), 0
      if bar is not None:
        bar.update(1)
      last = step == config.total_steps
      do_eval = step % config.eval_every == 0 or last
      do_log = step % config.log_every == 0 or last or do_eval
      do_ckpt = step % config.checkpoint_every == 0 or last
      if stop_at is not None and step >= stop_at and not last:
        stop.received = stop.received or f"stop_at={stop_at}"
        planned = True
      if do_log:
        last_record = log_train(step, flush())
        if bar is None and config.progress and (
            time.time() - t_printed >= PROGRESS_EVERY_S or last):
          _log(_progress_line(step, config.total_steps, last_record))
          t_printed = time.time()
        if bar is not None:
          acc = last_record.get("pseudo/acc")
          bar.set_postfix(loss=f"{last_record['train/loss']:.3f}",
                          mask=f"{last_record['train/mask_rate']:.2f}",
                          pl_acc="-" if acc is None else f"{acc:.2f}", refresh=False)
      if do_eval:
        ev = run_eval(state)
        host = jax.device_get({"c": state.confusion, "cm": state.confusion_masked})
        record = {k: v for k, v in ev.items() if k != "class_features"}
        record["pseudo/confusion"] = host["c"].astype(int).tolist()
        record["pseudo_masked/confusion"] = host["cm"].astype(int).tolist()
        writer.write(step, "eval", record)
        evals[step] = record
        if jax.process_index() == 0:  # latest, plus one small file per evaluation
          os.makedirs(os.path.join(workdir, "features"), exist_ok=True)
          for path in (os.path.join(workdir, "class_features.npz"),
                       os.path.join(workdir, "features", f"class_features_{step}.npz")):
            np.savez(path, step=step, class_means=ev["class_features"],
                     per_class_acc=np.asarray(ev["eval/per_class"]))
        state = state.replace(confusion=zeros_cc(), confusion_masked=zeros_cc())
        say(f"step {step}: {_EVAL_NAME[eval_which]} test top-1 {ev['eval/top1']:.2f}%; "
            "since the last evaluation: "
            f"{_pseudo_summary(last_record)}, mask rate {last_record['train/mask_rate']:.2f}")
      if do_ckpt:
        save(step)
    if vote is None:  # one process: a signal after the last step still counts, as before
      stopped = stopped or stop.received is not None
    if stopped:
      if pending:  # the steps since the last log are written, not dropped
        log_train(step, flush())
      save(step)
      ckpt.wait()
  finally:
    if bar is not None:
      bar.close()
    ckpt.close()
    writer.close()
  if stopped:
    _log(f"{stop.received}: checkpoint saved at step {step} in {ckpt.directory}; re-run the "
         "same command to resume")

  ordered = [evals[s] for s in sorted(evals)]
  last20 = [r["eval/top1"] for r in ordered[-20:]]
  final_pl = (metrics_lib.pseudo_label_stats(ordered[-1]["pseudo/confusion"])
              if ordered and "pseudo/confusion" in ordered[-1] else {})
  summary = {
      "step": step,
      "total_steps": config.total_steps,
      "interrupted": stopped,
      "method": config.method,
      "final_top1": ordered[-1]["eval/top1"] if ordered else None,
      "median_last20_top1": float(np.median(last20)) if last20 else None,
      "num_evals": len(ordered),
      "final_pseudo_acc": final_pl.get("pseudo/acc"),
      "final_pseudo_imbalance": final_pl.get("pseudo/imbalance"),
      "final_mask_rate": last_record.get("train/mask_rate"),
      "final_marginal": last_record.get("marginal"),
      "wall_seconds_this_invocation": time.time() - t_start,
      "device": f"{mesh.size} x {jax.devices()[0].device_kind}",
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    if not summary["interrupted"] and ordered:
      marginal = last_record.get("marginal") or []
      _log(f"done: {step} steps; {_EVAL_NAME[configs.eval_params(config)]} test top-1 "
           f"final {summary['final_top1']:.2f}%, median "
           f"of the last {len(last20)} evals {summary['median_last20_top1']:.2f}%"
           + (f"; marginal min/max {min(marginal):.3f}/{max(marginal):.3f}" if marginal
              else ""))
      shown = os.path.relpath(workdir)
      shown = workdir if shown.startswith("..") else shown
      _log(f"results in {shown}: summary.json, metrics.jsonl, tensorboard/ "
           f"(tensorboard --logdir {shown}); plots: make analyze WORKDIR={shown}")
  return summary
