"""Set-up: the config read once into the typed pieces each layer needs, then the model,
the state and the input built from them. The trainer, ``dlpl-bench`` and the throughput
benchmark all start here, so they run the same step.

  spec = setup.read(config)                      # ConfigDict -> Spec, validated
  mesh = mesh_lib.make_mesh()
  state = setup.new_state(spec, mesh)            # replicated on the mesh
  inp = setup.make_input(spec, mesh)             # Input(step, evaluate, describe)
  state, metrics = inp.step(state)

Below this module nothing reads the ConfigDict: the data layer gets a
:class:`~dlpl_jax.data.in_memory.DataSpec` or an
:class:`~dlpl_jax.data.imagenet.ImageNetSpec`, the step a
:class:`~dlpl_jax.training.step.StepConfig`, the optimizer an
:class:`~dlpl_jax.training.state.OptimizerConfig`, the loop a :class:`LoopConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from typing import Callable, Iterable, Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlpl_jax import configs
from dlpl_jax import models
from dlpl_jax.data import datasets
from dlpl_jax.data import imagenet
from dlpl_jax.data import in_memory
from dlpl_jax.errors import UsageError
from dlpl_jax.models import weights
from dlpl_jax.training import evaluate as evaluate_lib
from dlpl_jax.training import inputs
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import state as state_lib
from dlpl_jax.training.step import StepConfig


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The loop's rhythm: how long, how often it logs, evaluates and checkpoints."""
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  progress: bool = True


@dataclasses.dataclass(frozen=True)
class Spec:
  """A run, read from its config (:func:`read`).

  Attributes:
    config: the config as plain data (``config.json``, the resume check).
    method: ``fixmatch`` | ``debiaspl``.
    model: ``(name, num_classes, dtype)``, see :func:`build_model`.
    optimizer, step, loop: what the optimizer, the step and the loop need.
    data: the in-memory dataset, or None for the ImageNet input.
    streamed: the unlabeled set streamed through tf.data (``in_memory = False``).
    imagenet: the ImageNet input, or None.
    eval_params: ``ema`` | ``student``; eval_batch_size: global.
    init_checkpoint: initial weights ("" = random init).
    image_shape: ``(H, W, 3)``, or None when only the data tells (an unknown dataset).
    class_names: the dataset's class names.
  """
  config: dict
  method: str
  model: tuple[str, int, str]
  optimizer: state_lib.OptimizerConfig
  step: StepConfig
  loop: LoopConfig
  data: in_memory.DataSpec | None
  streamed: bool
  imagenet: imagenet.ImageNetSpec | None
  eval_params: str
  eval_batch_size: int
  init_checkpoint: str
  image_shape: tuple[int, int, int] | None
  class_names: tuple[str, ...]


def read(config) -> Spec:
  """The config, validated (:func:`dlpl_jax.configs.validate`), as a :class:`Spec`.

  Raises:
    UsageError: a bad value or combination, before any data is read.
  """
  configs.validate(config, check_files=False)  # init_checkpoint: read on a fresh start only
  c = config
  is_imagenet = configs.input_kind(c) == "imagenet"
  optimizer = state_lib.OptimizerConfig(
      lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay,
      total_steps=c.total_steps, schedule=c.lr_schedule, cosine_factor=c.cosine_factor,
      warmup_steps=c.warmup_steps, update_every=c.lr_update_every,
      decay_all=bool(c.weight_decay_all))
  step = StepConfig(
      c.num_classes, c.batch_size, c.mu, configs.effective_tau(c), c.threshold,
      c.marginal_momentum, c.lambda_u, c.ema_decay, c.seed, bool(c.teacher),
      float(c.teacher_momentum), int(c.num_views), float(c.cld_weight),
      float(c.cld_temperature),
      float(c.imagenet.clip_fallback) if is_imagenet and c.imagenet.split == "clip" else 0.0)
  loop = LoopConfig(c.total_steps, c.log_every, c.eval_every, c.checkpoint_every,
                    c.keep_checkpoints, bool(c.progress))
  data = None if is_imagenet else in_memory.DataSpec(
      c.dataset, c.num_classes, c.data_dir, c.labels_per_class, c.labeled_seed,
      in_memory.LongTail(c.lt.n1, c.lt.m1, c.lt.gamma, c.lt.unlabeled_profile)
      if c.lt.enabled else None, c.eval_examples)
  image_shape = ((c.imagenet.crop_size,) * 2 + (3,) if is_imagenet else
                 (32, 32, 3) if c.dataset in datasets.KNOWN else None)
  return Spec(
      config=configs.to_dict(c), method=c.method, model=(c.model, c.num_classes, c.dtype),
      optimizer=optimizer, step=step, loop=loop, data=data,
      streamed=not is_imagenet and not c.in_memory,
      imagenet=_imagenet_spec(c) if is_imagenet else None,
      eval_params=configs.eval_params(c), eval_batch_size=c.eval_batch_size,
      init_checkpoint=c.init_checkpoint, image_shape=image_shape,
      class_names=tuple(datasets.class_names(c.dataset, c.num_classes,
                                             None if is_imagenet else c.data_dir or None)))


def _imagenet_spec(c) -> imagenet.ImageNetSpec:
  """The ``imagenet`` block's keys of the same names, and the run's batch sizes."""
  names = [f.name for f in dataclasses.fields(imagenet.ImageNetSpec)]
  values = {**{k: c[k] for k in names if k in c}, **{k: c.imagenet[k] for k in names
                                                      if k in c.imagenet}}
  return imagenet.ImageNetSpec(**values, unlabeled_batch=c.batch_size * c.mu)


@functools.lru_cache(maxsize=None)
def build_model(model: tuple[str, int, str]) -> nn.Module:
  """The model ``(name, num_classes, dtype)`` (cached, so that ``state.apply_fn`` is one
  object per model and jit's caches hit)."""
  name, num_classes, dtype = model
  return models.create_model(name, num_classes,
                             dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)


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


def runtime_estimate(spec: Spec) -> tuple[float, float] | None:
  """``(cpu_hours, h100_hours)`` for the run's model and steps, or None (small model)."""
  name = spec.model[0]
  if name not in _CPU_S_PER_IMAGE:
    return None
  s = spec.step
  images = spec.loop.total_steps * s.batch_size * (1 + 2 * s.num_views * s.mu)
  return images * _CPU_S_PER_IMAGE[name] / 3600, images * _H100_S_PER_IMAGE[name] / 3600


def check_devices(spec: Spec, mesh, allow_cpu: bool, log: Callable[[str], None]) -> None:
  """Refuses batch sizes that the devices do not divide, and, on a CPU, a run that needs
  a GPU/TPU (unless ``allow_cpu``)."""
  s = spec.step
  for name, value in (("batch_size", s.batch_size), ("eval_batch_size", spec.eval_batch_size)):
    if value % mesh.size:  # (then batch_size * mu divides too)
      raise UsageError(f"bad config: {name} = {value} must be divisible by the "
                       f"{mesh.size} devices")
  est = runtime_estimate(spec)
  if jax.default_backend() != "cpu" or est is None or est[0] <= CPU_LIMIT_HOURS:
    return
  name = spec.model[0]
  msg = (f"this config trains {name} for {spec.loop.total_steps:,} steps: about "
         f"{est[1]:.1f} h on one H100 in bfloat16, but about {est[0] / 24:,.0f} days on "
         "this CPU-only host (scaled from a step measured on 2 vCPUs"
         + ("; the H100 figure from an assumed 3,000 images/s" if name == "resnet50"
            else "") + "). It needs a GPU/TPU. On a CPU, try the smoke run (make train "
         "CONFIG=experiments/cifar10_4shot.py:smoke) or the CPU study (make study)")
  if not allow_cpu:
    raise UsageError(msg + "; --allow_cpu starts it anyway")
  log("note: " + msg)


def new_state(spec: Spec, mesh, read_init: bool = True,
              image_shape: tuple[int, ...] | None = None) -> state_lib.TrainState:
  """A fresh state (:func:`dlpl_jax.training.state.create_train_state`), replicated on
  the mesh. ``read_init``: take the initial weights from ``spec.init_checkpoint`` (a
  resumed run restores its checkpoint over this state, and never reads that file: it
  may have moved). ``image_shape`` overrides ``spec.image_shape``."""
  path = spec.init_checkpoint if read_init else ""
  if path and not os.path.isfile(path):
    raise UsageError(f"bad config: init_checkpoint = {path!r} is not a file")

  def init_weights(variables):  # every array of the model from the file, shapes checked
    try:
      return weights.init_variables(variables, weights.load_variables_file(path))
    except weights.WeightsError as e:
      raise UsageError(f"init_checkpoint {path!r}: {e}") from None
  state = state_lib.create_train_state(
      build_model(spec.model), state_lib.make_optimizer(spec.optimizer),
      seed=spec.step.seed, image_shape=image_shape or spec.image_shape,
      teacher=spec.step.teacher, init=init_weights if path else None)
  return mesh_lib.replicate(jax.device_get(state), mesh)


class Crops(NamedTuple):
  """Host-made ImageNet crops to use instead of reading TFDS (benchmarks, tests): this
  process's batches, as :mod:`dlpl_jax.data.imagenet` yields them.

  Attributes:
    labeled: an iterator of ``{image [b, S, S, 3], label [b]}``.
    unlabeled: an iterator of ``{weak [K, bu, S, S, 3], strong [K, bu, S, S, 3],
      label [bu]}`` (with ``clip_label``, ``clip_prob`` for the CLIP fallback).
    evaluation: ``() -> iterable`` of ``{image, label}`` evaluation batches.
  """
  labeled: Iterator[dict]
  unlabeled: Iterator[dict]
  evaluation: Callable[[], Iterable[dict]]


class Input(NamedTuple):
  """The run's input, built by :func:`make_input`.

  Attributes:
    step: ``state -> (state, metrics)``: the next batch through the jitted input stage
      and step (:mod:`dlpl_jax.training.inputs`).
    evaluate: ``state -> eval dict`` (:mod:`dlpl_jax.training.evaluate`).
    describe: what is read, for the log.
  """
  step: Callable
  evaluate: Callable
  describe: str


def make_input(spec: Spec, mesh, data: in_memory.SSLData | Crops | None = None,
               step: int = 0) -> Input:
  """The input of ``spec`` on ``mesh``, from ``step`` on (streams are seeded with it).

  ``data``: in-memory splits (or, for the ImageNet input, :class:`Crops`) to use instead
  of reading the dataset (tests, benchmarks). Reads the data (never downloads it).
  """
  cfg = dataclasses.replace(spec.step, mesh=mesh)
  model = build_model(spec.model)
  if spec.imagenet is not None:
    return _imagenet_input(spec, cfg, model, step, data)
  data = data if data is not None else in_memory.load(spec.data)
  check_same_data(data)
  describe = f"data: {data.describe(spec.step.num_classes)}"
  if not spec.streamed:
    arrays = mesh_lib.replicate({"x_l": data.x_l, "y_l": data.y_l, "x_u": data.x_u,
                                 "y_u": data.y_u}, mesh)
    run_step = functools.partial(inputs.in_memory_step, data=arrays, model=model, cfg=cfg)
  else:  # the unlabeled batches streamed through tf.data (datasets that do not fit)
    labeled = mesh_lib.replicate({"x_l": data.x_l, "y_l": data.y_l}, mesh)
    unlabeled = _unlabeled_stream(spec, step)

    def run_step(state):
      u = next(unlabeled)  # this process's part of the global batch
      u = mesh_lib.from_processes({"image": u["image"],
                                   "label": u["label"].astype(np.int32)}, mesh)
      return inputs.streamed_step(state, labeled, u, model=model, cfg=cfg)
    describe += ("\nunlabeled batches streamed from TFDS (tf.data"
                 + (", a disjoint part of the split per process"
                    if jax.process_count() > 1 else "") + "); a resumed run reshuffles")
  x_test, y_test = mesh_lib.replicate(
      evaluate_lib.pad_test_set(data.x_test, data.y_test, spec.eval_batch_size), mesh)
  evaluate = functools.partial(evaluate_lib.evaluate, x_test=x_test, y_test=y_test,
                               model=model, batch=spec.eval_batch_size, mesh=mesh,
                               params=spec.eval_params)
  return Input(run_step, evaluate, describe)


def _unlabeled_stream(spec: Spec, step: int):
  """This process's unlabeled batches (``in_memory = False``): process i of n reads the
  i-th of n disjoint parts of the training split in batches of ``B * mu / n``; the
  shuffle seed depends on the step, so a resumed run reads a new order."""
  from dlpl_jax.data import tfds  # pylint: disable=g-import-not-at-top
  n = jax.process_count()
  s = spec.step
  return tfds.stream(spec.data.dataset, "train", s.batch_size * s.mu // n,
                     seed=s.seed + step, data_dir=spec.data.data_dir or None,
                     shard=(jax.process_index(), n))


def check_same_data(data: in_memory.SSLData) -> None:
  """Several processes must hold the same in-memory arrays (each draws its part of the
  global batch from its own copy with the same key): a crc32 of each array is compared
  across processes, and a difference (another data folder or dataset version on one
  host) is a UsageError on every process, not a silent mix."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  local = np.array([zlib.crc32(np.ascontiguousarray(a).view(np.uint8)) ^ a.size
                    for a in data], np.uint32)
  everyone = np.asarray(multihost_utils.process_allgather(local))  # [processes, arrays]
  differ = [n for n, col in zip(data._fields, everyone.T) if len(set(col.tolist())) > 1]
  if differ:
    raise UsageError(
        f"the processes loaded different data ({', '.join(differ)} differ between "
        "processes): give every process the same dataset version and data folder")


def _imagenet_input(spec: Spec, cfg: StepConfig, model: nn.Module, step: int,
                    crops: Crops | None) -> Input:
  """The ImageNet input: labeled and unlabeled crops streamed by this process's tf.data
  pipelines (:mod:`dlpl_jax.data.imagenet`), or ``crops``; evaluation streamed from the
  validation split."""
  o, mesh = spec.imagenet, cfg.mesh
  shard = (jax.process_index(), jax.process_count())
  if crops is None:
    crops, describe = _imagenet_crops(o, step, shard, cfg.clip_fallback)
  else:
    describe = "data: host-made crops given by the caller"

  def run_step(state):
    lab = mesh_lib.from_processes(next(crops.labeled), mesh)
    unl = mesh_lib.from_processes(next(crops.unlabeled), mesh, {"weak": 1, "strong": 1})
    return inputs.crops_step(state, lab, unl, model=model, cfg=cfg)

  def evaluate(state):
    return evaluate_lib.evaluate_batches(state, crops.evaluation(), model=model,
                                         batch=o.eval_batch_size, mesh=mesh,
                                         params=spec.eval_params)
  return Input(run_step, evaluate, describe)


def _imagenet_crops(o: imagenet.ImageNetSpec, step: int, shard: tuple[int, int],
                    clip_fallback: float) -> tuple[Crops, str]:
  """This process's ImageNet streams (:mod:`dlpl_jax.data.imagenet`) and their log line."""
  found = imagenet.num_classes(o)
  if found != o.num_classes:
    raise UsageError(f"{o.train_name} has {found} classes but config.num_classes = "
                     f"{o.num_classes}")
  source, clip = imagenet.labeled_source(o)
  crops = Crops(imagenet.labeled_stream(o, source, step, shard),
                imagenet.unlabeled_stream(o, step, shard, clip if clip_fallback > 0 else None),
                functools.partial(imagenet.eval_batches, o, shard))
  what = (f"labeled {source.name} ({o.split}"
          + (f", {len(source.file_names)} images" if source.file_names is not None else "")
          + f"), unlabeled {o.train_name} train"
          + (f" less the pseudo-labeled images, CLIP fallback >= {clip_fallback}"
             if clip is not None else ""))
  return crops, (f"data: {what}; views streamed by tf.data"
                 + (", a disjoint part per process" if shard[1] > 1 else "")
                 + "; a resumed run reshuffles")
