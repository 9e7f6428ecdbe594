"""The train state (all a resume needs, the class marginal included), the optimizer and
its learning-rate schedules.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax


class TrainState(train_state.TrainState):
  """All a resume needs: params, opt_state and step (from the base class), plus:

  Attributes:
    batch_stats: BatchNorm running statistics.
    ema_params: EMA of the params (``ema_decay``), used for evaluation.
    marginal: ``[C]`` DebiasPL's class marginal p̂ (starts uniform; checkpointed).
    confusion: ``[C, C]`` (true class, pseudo-label) counts on the unlabeled images
      since the last evaluation, all pseudo-labels.
    confusion_masked: ``[C, C]`` the same for the confident (mask = 1) pseudo-labels.
  """
  batch_stats: Any
  ema_params: Any
  marginal: jax.Array
  confusion: jax.Array
  confusion_masked: jax.Array


class TeacherTrainState(TrainState):
  """The train state of a run with an EMA teacher (``config.teacher``), plus:

  Attributes:
    teacher_params, teacher_batch_stats: the EMA (``teacher_momentum``) of the params
      and of the BN statistics, which gives the weak-view logits in eval mode.

  A separate class, so that a run without the teacher keeps :class:`TrainState`'s
  checkpoint layout exactly.
  """
  teacher_params: Any
  teacher_batch_stats: Any


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """SGD with (Nesterov) momentum, coupled weight decay and the learning-rate schedule.

  ``schedule``: ``fixmatch`` (:func:`fixmatch_cosine`) or ``warmup_cosine``
  (:func:`warmup_cosine`, with ``warmup_steps`` and ``update_every``).
  ``decay_all``: decay every parameter (BN scales, biases), not only the kernels.
  """
  lr: float
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 5e-4
  total_steps: int = 2**20
  schedule: str = "fixmatch"
  cosine_factor: float = 7.0 / 16.0
  warmup_steps: int = 0
  update_every: int = 1
  decay_all: bool = False


@functools.lru_cache(maxsize=None)
def learning_rate(opt: OptimizerConfig) -> optax.Schedule:
  """The learning rate per step (cached: an equal config gives the same function, a
  static part of the TrainState, so that jit's cache hits)."""
  if opt.schedule == "warmup_cosine":
    return warmup_cosine(opt.lr, opt.warmup_steps, opt.total_steps, opt.update_every)
  return fixmatch_cosine(opt.lr, opt.cosine_factor, opt.total_steps)


def fixmatch_cosine(lr: float, cosine_factor: float, total_steps: int) -> optax.Schedule:
  r"""FixMatch's schedule, :math:`\eta(k) = \eta_0 \cos(\pi f \min(k, K) / K)` for update
  ``k``, ``f = cosine_factor`` (7/16) and ``K`` total steps."""
  def schedule(step):
    frac = jnp.minimum(step, total_steps) / total_steps
    return lr * jnp.cos(jnp.pi * cosine_factor * frac)
  return schedule


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int,
                  update_every: int = 1) -> optax.Schedule:
  r"""Linear warm-up, then a half cosine to 0, as the official ImageNet recipe.

  .. math::
    \eta(k) = \begin{cases}
      \eta_0 \, \frac{k + 1}{W} & k < W \\
      \eta_0 \, \frac12 \big(1 + \cos(\pi \, \mathrm{clip}(\frac{\lfloor k / E
      \rfloor E - W}{K - W}, 0, 1))\big) & k \ge W
    \end{cases}

  for update ``k`` (0-based; the warm-up's first step already uses ``lr / W``), ``W``
  warm-up steps, ``K`` total steps and the cosine held for ``E = update_every`` steps
  (the official code sets it once per epoch: ``E`` = the steps of one epoch, ``W`` = 5
  epochs; ``E = 1`` changes it every step).
  """
  warmup = max(int(warmup_steps), 1)
  span = max(int(total_steps) - int(warmup_steps), 1)

  def schedule(step):
    held = (step // update_every) * update_every
    progress = jnp.clip((held - warmup_steps) / span, 0.0, 1.0)
    cosine = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    ramp = lr * jnp.minimum(step + 1, warmup) / warmup
    return jnp.where(step < warmup_steps, ramp, cosine)
  return schedule


def _kernels_only(params):
  # Weight decay on conv / dense kernels only (not biases, not BatchNorm scales).
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


@functools.lru_cache(maxsize=None)
def make_optimizer(opt: OptimizerConfig) -> optax.GradientTransformation:
  """SGD with the schedule; weight decay is added to the gradient before momentum
  (coupled, as torch.optim.SGD(weight_decay=...) in FixMatch-pytorch), on kernels
  only, or on every parameter with ``decay_all`` (as the official ImageNet code's SGD
  over ``model.parameters()``). Cached, like :func:`learning_rate`."""
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay, mask=None if opt.decay_all else _kernels_only),
      optax.sgd(learning_rate(opt), momentum=opt.momentum, nesterov=opt.nesterov))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, *, seed: int,
                       image_shape: tuple[int, ...], teacher: bool = False,
                       init=None) -> TrainState:
  """A fresh state: params from ``PRNGKey(seed)`` (or ``init``, the model's variables
  from a file, already merged into a fresh init), a uniform marginal, zero counters; the
  EMA (and the teacher, when on) start equal to the params and BN statistics.

  Args:
    model: the Flax model; its class count sizes the marginal and the counters.
    tx: the optimizer.
    seed: the init's PRNG seed.
    image_shape: ``(H, W, 3)`` of the images the model sees.
    teacher: a :class:`TeacherTrainState`.
    init: ``fn(variables) -> variables`` applied to the fresh init (initial weights).
  """
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((2, *image_shape), jnp.uint8),
                         train=False)
  if init is not None:
    variables = init(variables)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  c = model.num_classes
  fields = dict(
      apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats,
      ema_params=jax.tree_util.tree_map(jnp.copy, params),
      marginal=jnp.full((c,), 1.0 / c, jnp.float32),
      confusion=jnp.zeros((c, c), jnp.float32),
      confusion_masked=jnp.zeros((c, c), jnp.float32))
  if not teacher:
    return TrainState.create(**fields)
  return TeacherTrainState.create(
      **fields, teacher_params=jax.tree_util.tree_map(jnp.copy, params),
      teacher_batch_stats=jax.tree_util.tree_map(jnp.copy, batch_stats))
