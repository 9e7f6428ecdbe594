"""FixMatch / DebiasPL training: the TrainState and the jitted data-parallel steps.

Arrows point one way: this module composes the pure math (:mod:`dlpl_jax.pseudo_label`),
augmentation (:mod:`dlpl_jax.augment`) and the model; the loop around it (data,
evaluation, metrics, checkpoints) is :mod:`dlpl_jax.trainer`.

Data parallelism is jax.jit over a 1-D device mesh with a ``"data"`` axis: the state and
the in-memory datasets are replicated, each step's batch is sharded along ``"data"``.
The formulas are written in the global view, so batch-norm statistics, the losses and
the class-marginal update are over the GLOBAL batch (the same numbers on 1 or N devices).

The ImageNet recipe's options (docs/METHOD.md; all off by default, and then the step is
the CIFAR step exactly): an EMA teacher of the params and BN statistics that gives the
weak-view logits (``teacher``), K weak and K strong views (``num_views``), the CLD loss
(``cld_weight``), linear warm-up then a half cosine (``lr_schedule``), weight decay on
every parameter (``weight_decay_all``) and initial weights from a file
(``init_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import flax.traverse_util
from flax.training import train_state
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax

from dlpl_jax import augment
from dlpl_jax import configs
from dlpl_jax import errors
from dlpl_jax import loss as loss_lib
from dlpl_jax import models
from dlpl_jax import multiview
from dlpl_jax import pseudo_label
from dlpl_jax.errors import UsageError


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
class StepConfig:
  """The static (hashable) numbers of a train step."""
  num_classes: int
  batch_size: int
  mu: int
  tau: float
  threshold: float
  marginal_momentum: float
  lambda_u: float
  ema_decay: float
  seed: int
  teacher: bool = False
  teacher_momentum: float = 0.999
  num_views: int = 1
  cld_weight: float = 0.0
  cld_temperature: float = 0.07
  clip_fallback: float = 0.0

  @classmethod
  def from_config(cls, c) -> "StepConfig":
    opt = functools.partial(configs.recipe_option, c)
    return cls(c.num_classes, c.batch_size, c.mu, configs.effective_tau(c), c.threshold,
               c.marginal_momentum, c.lambda_u, c.ema_decay, c.seed,
               bool(opt("teacher")), float(opt("teacher_momentum")), int(opt("num_views")),
               float(opt("cld_weight")), float(opt("cld_temperature")),
               _clip_fallback(c))


def _clip_fallback(c) -> float:
  """The zero-shot recipe's CLIP fallback threshold (0 = off; ImageNet ``clip`` only)."""
  if configs.input_kind(c) != "imagenet" or c.imagenet.split != "clip":
    return 0.0
  return float(c.imagenet.clip_fallback)


def learning_rate_schedule(config) -> optax.Schedule:
  """The config's learning rate per step (``lr_schedule``).

  ``fixmatch``: FixMatch's lr * cos(pi * cosine_factor * step / total_steps).
  ``warmup_cosine``: the official ImageNet recipe's, see :func:`warmup_cosine_schedule`.
  """
  if configs.recipe_option(config, "lr_schedule") == "warmup_cosine":
    return warmup_cosine_schedule(config.lr, configs.recipe_option(config, "warmup_steps"),
                                  config.total_steps,
                                  configs.recipe_option(config, "lr_update_every"))
  return _schedule(config.lr, config.cosine_factor, config.total_steps)


@functools.lru_cache(maxsize=None)
def warmup_cosine_schedule(lr: float, warmup_steps: int, total_steps: int,
                           update_every: int = 1) -> optax.Schedule:
  r"""Linear warm-up, then a half cosine to 0, as the official ImageNet recipe.

  .. math::
    \eta(k) = egin{cases}
      \eta_0 \, rac{k + 1}{W} & k < W \
      \eta_0 \, 	frac12 ig(1 + \cos(\pi \, \mathrm{clip}(rac{\lfloor k / E 
floor E - W}{K - W}, 0, 1))ig) & k \ge W
    \end{cases}

  for update ``k`` (0-based; the warm-up's first step already uses ``lr / W``), ``W``
  warm-up steps, ``K`` total steps and the cosine held for ``E = update_every`` steps
  (the official code sets it once per epoch: ``E`` = the steps of one epoch, ``W`` = 5
  epochs; ``E = 1`` changes it every step). Cached, so an equal config gives the same
  function object (the optimizer is a static part of the TrainState).
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


@functools.lru_cache(maxsize=None)
def _schedule(lr: float, cosine_factor: float, total_steps: int) -> optax.Schedule:
  def schedule(step):
    frac = jnp.minimum(step, total_steps) / total_steps
    return lr * jnp.cos(jnp.pi * cosine_factor * frac)
  return schedule


def _decay_mask(params):
  # Weight decay on conv / dense kernels only (not biases, not BatchNorm scales).
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and the config's schedule; weight decay is added to
  the gradient before momentum (coupled, as torch.optim.SGD(weight_decay=...) in
  FixMatch-pytorch), on kernels only, or on every parameter with ``weight_decay_all``
  (as the official ImageNet code's SGD over ``model.parameters()``).

  Cached on the config's numbers: the optimizer is a static part of the TrainState's
  tree structure, so an equal config must give the same object for jit's cache to hit.
  """
  return _optimizer(learning_rate_schedule(config), config.weight_decay, config.momentum,
                    config.nesterov, bool(configs.recipe_option(config, "weight_decay_all")))


@functools.lru_cache(maxsize=None)
def _optimizer(schedule, weight_decay, momentum, nesterov, decay_all):
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=None if decay_all else _decay_mask),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov))


def build_model(config) -> nn.Module:
  """The config's model (cached, so ``state.apply_fn`` is the same object per config)."""
  return _model(config.model, config.num_classes, config.dtype)


@functools.lru_cache(maxsize=None)
def _model(name: str, num_classes: int, dtype: str) -> nn.Module:
  return models.create_model(name, num_classes,
                             dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)


def load_variables_file(path: str) -> dict:
  """Model variables ``{"params": ..., "batch_stats": ...}`` (nested dicts) from a file.

  ``.npz``: one array per leaf, keyed by its ``/``-joined Flax path
  (``params/conv0/kernel``); any other file: ``flax.serialization.msgpack_serialize`` of
  the variables, as ``python -m dlpl_jax.convert`` writes from a PyTorch checkpoint
  (read by :func:`dlpl_jax.convert.load_variables`).

  Raises:
    UsageError: the file is missing or unreadable, or an ``.npz`` whose keys are not
      Flax variable paths (a PyTorch state dict: convert it first).
  """
  from dlpl_jax import convert  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise UsageError(f"init_checkpoint {path!r} is not a file")
  if not path.endswith(".npz"):
    return convert.load_variables(path)
  try:
    flat = errors.read_npz(path)
  except UsageError as e:
    raise UsageError(f"init_checkpoint: {e}") from None
  other = sorted(k for k in flat if k.split("/")[0] not in ("params", "batch_stats"))
  if other:
    raise UsageError(f"init_checkpoint {path!r}: keys such as {other[0]!r} are not Flax "
                     "variable paths (params/..., batch_stats/...); convert a PyTorch "
                     "state dict with python -m dlpl_jax.convert")
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def create_train_state(config, model: nn.Module, image_shape: tuple[int, ...],
                       read_init: bool = True) -> TrainState:
  """A fresh state: params from ``PRNGKey(seed)`` (then the leaves of ``init_checkpoint``
  when set and ``read_init``), uniform marginal, zero counters; the EMA (and the teacher,
  when on) start equal to the params and BN statistics.

  A resumed run restores its checkpoint over this state: the trainer passes
  ``read_init=False`` then, so the file is not read again (it may have moved).
  """
  variables = model.init(jax.random.PRNGKey(config.seed),
                         jnp.zeros((2, *image_shape), jnp.uint8), train=False)
  init_file = configs.recipe_option(config, "init_checkpoint") if read_init else ""
  if init_file:
    # Every array of the model from the file, shapes checked; only the classifier may
    # be absent (a self-supervised checkpoint has none) and keeps its random init.
    from dlpl_jax import convert  # pylint: disable=g-import-not-at-top
    try:
      variables = convert.init_variables(variables, load_variables_file(init_file))
    except convert.ConversionError as e:
      raise UsageError(f"init_checkpoint {init_file!r}: {e}") from None
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  c = config.num_classes
  fields = dict(
      apply_fn=model.apply, params=params, tx=make_optimizer(config),
      batch_stats=batch_stats,
      ema_params=jax.tree_util.tree_map(jnp.copy, params),
      marginal=jnp.full((c,), 1.0 / c, jnp.float32),
      confusion=jnp.zeros((c, c), jnp.float32),
      confusion_masked=jnp.zeros((c, c), jnp.float32))
  if not configs.recipe_option(config, "teacher"):
    return TrainState.create(**fields)
  return TeacherTrainState.create(
      **fields, teacher_params=jax.tree_util.tree_map(jnp.copy, params),
      teacher_batch_stats=jax.tree_util.tree_map(jnp.copy, batch_stats))


def _shard(x, mesh: Mesh | None):
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))


def fixmatch_update(state: TrainState, key: jax.Array, x_l, y_l, x_u, y_u, *,
                    model: nn.Module, cfg: StepConfig, mesh: Mesh | None):
  """One FixMatch/DebiasPL update on a drawn batch (uint8 images, pre-augmentation).

  Augments on the device (one weak view of the labeled images, ``cfg.num_views`` weak
  and strong views of the unlabeled ones, each view with its own key), then
  :func:`update_on_views`.

  Args:
    state: the train state.
    key: this step's PRNG key (augmentation).
    x_l: ``[B, H, W, 3]`` labeled images; y_l ``[B]`` their labels.
    x_u: ``[B * mu, H, W, 3]`` unlabeled images; y_u ``[B * mu]`` their true labels
      (monitoring only).
    model, cfg, mesh: static.

  Returns:
    ``(new_state, metrics)`` with scalar metrics.
  """
  k_l, k_w, k_s = jax.random.split(key, 3)
  if cfg.num_views == 1:  # the keys of the one-view step, unchanged
    keys_w, keys_s = [k_w], [k_s]
  else:
    keys_w = list(jax.random.split(k_w, cfg.num_views))
    keys_s = list(jax.random.split(k_s, cfg.num_views))
  return update_on_views(state, augment.weak(k_l, x_l), y_l,
                         [augment.weak(k, x_u) for k in keys_w],
                         [augment.strong(k, x_u) for k in keys_s], y_u,
                         model=model, cfg=cfg, mesh=mesh)


def _as_views(views, name: str, num_views: int) -> list:
  """A list of K ``[B, H, W, 3]`` arrays from a list or a ``[K, B, H, W, 3]`` array."""
  if not isinstance(views, (list, tuple)):
    if jnp.ndim(views) != 5:
      raise ValueError(f"{name} must be a list of [B, H, W, 3] arrays or one "
                       f"[K, B, H, W, 3] array, got shape {jnp.shape(views)}")
    views = [views[k] for k in range(views.shape[0])]
  if len(views) != num_views:
    raise ValueError(f"{name}: {len(views)} views given, the config's num_views is "
                     f"{num_views}")
  return list(views)


def update_on_views(state: TrainState, images_l, y_l, weak_views, strong_views, y_u, *,
                    model: nn.Module, cfg: StepConfig, mesh: Mesh | None,
                    clip_label=None, clip_prob=None):
  """One FixMatch/DebiasPL update on augmented views (pixels in [0, 255]).

  The student sees, in one batch (so its BN statistics are over all of them): the
  labeled view, the weak views (unless the teacher gives their logits) and the strong
  views. With ``cfg.teacher`` the EMA teacher runs on the weak views in eval mode (its
  own params and BN statistics, no gradient) and is updated after the step:
  ``teacher = m teacher + (1 - m) student`` for the params AND the BN statistics, with
  the student's values after this step, ``m = cfg.teacher_momentum``.

  Args:
    state: the train state.
    images_l: ``[B, H, W, 3]`` the labeled view; y_l ``[B]`` its labels.
    weak_views, strong_views: ``cfg.num_views`` views each of the unlabeled images: a
      list of ``[B * mu, H, W, 3]`` arrays or one ``[K, B * mu, H, W, 3]`` array (e.g.
      views made on the host).
    y_u: ``[B * mu]`` the unlabeled images' true labels (monitoring only).
    model, cfg, mesh: static.
    clip_label, clip_prob: ``[B * mu]`` CLIP's label and probability of the unlabeled
      images, needed when ``cfg.clip_fallback > 0``: the unlabeled loss becomes
      ``(L_u + L_clip) / 2`` (:func:`dlpl_jax.multiview.clip_fallback_loss`).

  Returns:
    ``(new_state, metrics)`` with scalar metrics (``train/loss_cld`` only when the CLD
    loss is on; ``train/loss_clip`` and ``train/clip_rate`` with the CLIP fallback).
  """
  if cfg.clip_fallback > 0 and (clip_label is None or clip_prob is None):
    raise ValueError("cfg.clip_fallback > 0 needs clip_label and clip_prob")
  weak_views = _as_views(weak_views, "weak_views", cfg.num_views)
  strong_views = _as_views(strong_views, "strong_views", cfg.num_views)
  n_l, n_u, k = images_l.shape[0], weak_views[0].shape[0], cfg.num_views
  if cfg.teacher != isinstance(state, TeacherTrainState):
    raise ValueError(f"the step's teacher = {cfg.teacher} but the state is a "
                     f"{type(state).__name__}; create it from the same config")
  if cfg.teacher:
    images = jnp.concatenate([images_l, *strong_views], axis=0)
    teacher_in = _shard(jnp.concatenate(weak_views, axis=0), mesh)
    teacher_logits = model.apply(
        {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats},
        teacher_in, train=False)
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  else:
    images = jnp.concatenate([images_l, *weak_views, *strong_views], axis=0)
  images = _shard(images, mesh)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    logits_l = logits[:n_l]
    if cfg.teacher:
      logits_w, logits_s = teacher_logits, logits[n_l:]
    else:
      logits_w, logits_s = logits[n_l:n_l + k * n_u], logits[n_l + k * n_u:]
    loss_x = jnp.mean(loss_lib.cross_entropy(logits_l, y_l))
    if k == 1:
      u = pseudo_label.unlabeled_loss(logits_w, logits_s, state.marginal, cfg.tau,
                                      cfg.threshold, cfg.marginal_momentum)
    else:
      u = multiview.multiview_unlabeled_loss(
          logits_w.reshape(k, n_u, -1), logits_s.reshape(k, n_u, -1), state.marginal,
          cfg.tau, cfg.threshold, cfg.marginal_momentum)
    clip = None
    if cfg.clip_fallback > 0:
      clip = multiview.clip_fallback_loss(
          logits_w.reshape(k, n_u, -1), logits_s.reshape(k, n_u, -1), state.marginal,
          u.marginal, clip_label, clip_prob, cfg.tau, cfg.threshold, cfg.clip_fallback)
      u = u._replace(loss=(u.loss + clip[0]) / 2)
    total = loss_x + cfg.lambda_u * u.loss
    loss_cld = None
    if cfg.cld_weight > 0:
      loss_cld = jnp.mean(loss_lib.cld_loss(*_cld_inputs(logits_w, logits_s, u, cfg),
                                            temperature=cfg.cld_temperature))
      total = total + cfg.cld_weight * loss_cld
    return total, (updates["batch_stats"], loss_x, u, loss_cld, clip)

  grads, (batch_stats, loss_x, u, loss_cld, clip) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  new_state = state.apply_gradients(grads=grads)
  d = cfg.ema_decay
  ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, state.ema_params,
                               new_state.params)
  onehot_true = jax.nn.one_hot(y_u, cfg.num_classes, dtype=jnp.float32)
  onehot_pl = jax.nn.one_hot(u.labels, cfg.num_classes, dtype=jnp.float32)
  confusion = onehot_true.T @ onehot_pl
  confusion_masked = (onehot_true * u.mask[:, None]).T @ onehot_pl
  new_state = new_state.replace(
      batch_stats=batch_stats, ema_params=ema, marginal=u.marginal,
      confusion=state.confusion + confusion,
      confusion_masked=state.confusion_masked + confusion_masked)
  if cfg.teacher:
    new_state = new_state.replace(
        teacher_params=teacher_update(state.teacher_params, new_state.params,
                                      cfg.teacher_momentum),
        teacher_batch_stats=teacher_update(state.teacher_batch_stats, batch_stats,
                                           cfg.teacher_momentum))
  # Pseudo-label accuracy and class counts come from the confusion counters (one
  # definition, in dlpl_jax.metrics); the norm of the UPDATED params catches a step that
  # turned them non-finite while its loss (computed before the update) was finite.
  total = loss_x + cfg.lambda_u * u.loss
  if loss_cld is not None:
    total = total + cfg.cld_weight * loss_cld
  metrics = {
      "train/loss": total,
      "train/loss_x": loss_x,
      "train/loss_u": u.loss,
      "train/mask_rate": jnp.mean(u.mask),
      "train/grad_norm": optax.global_norm(grads),
      "train/param_norm": optax.global_norm(new_state.params),
  }
  if loss_cld is not None:
    metrics["train/loss_cld"] = loss_cld
  if clip is not None:
    metrics["train/loss_clip"] = clip[0]
    metrics["train/clip_rate"] = jnp.mean(clip[1])
  return new_state, metrics


def teacher_update(teacher, student, momentum: float):
  """``m * teacher + (1 - m) * student`` leaf by leaf (params or BN statistics)."""
  return jax.tree_util.tree_map(lambda t, s: momentum * t + (1 - momentum) * s,
                                teacher, student)


def _cld_inputs(logits_w, logits_s, u, cfg: StepConfig):
  """The (strong, weak) logits the official code gives its CLD loss: with one view the
  strong logits AFTER the margin shift (tau log p̂_new) and the weak logits; with K views
  the mean of the K strong logits (unshifted) and the mean of the K weak logits."""
  if cfg.num_views == 1:
    shift = cfg.tau * loss_lib.log_marginal(u.marginal)
    return logits_s.astype(jnp.float32) + shift, logits_w
  n_u = logits_w.shape[0] // cfg.num_views
  mean = lambda z: jnp.sum(z.reshape(cfg.num_views, n_u, -1).astype(jnp.float32), 0) / cfg.num_views
  return mean(logits_s), mean(logits_w)


def step_key(seed: int, step) -> jax.Array:
  """The PRNG key of a step: fold_in(PRNGKey(seed), step), so a resumed run draws the
  same batches and augmentations as an uninterrupted one."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def train_step(state: TrainState, data: dict[str, jax.Array], *, model: nn.Module,
               cfg: StepConfig, mesh: Mesh | None = None):
  """One step on in-memory data: draws the batch on the device, then updates.

  Labeled and unlabeled indices are drawn uniformly with replacement from this step's
  key (no host work, no epoch bookkeeping).

  Args:
    state: the train state (replicated).
    data: device arrays ``x_l [NL, H, W, 3] uint8``, ``y_l [NL]``, ``x_u [NU, ...]``,
      ``y_u [NU]`` (replicated).
    model: the Flax model (static).
    cfg: the step's static numbers.
    mesh: the device mesh whose ``"data"`` axis shards the batch; None = no constraint.

  Returns:
    ``(new_state, metrics)``.
  """
  key = step_key(cfg.seed, state.step)
  k_idx_l, k_idx_u, k_aug = jax.random.split(key, 3)
  il = _shard(jax.random.randint(k_idx_l, (cfg.batch_size,), 0, data["y_l"].shape[0]), mesh)
  iu = _shard(jax.random.randint(k_idx_u, (cfg.batch_size * cfg.mu,), 0,
                                 data["y_u"].shape[0]), mesh)
  return fixmatch_update(state, k_aug, data["x_l"][il], data["y_l"][il], data["x_u"][iu],
                         data["y_u"][iu], model=model, cfg=cfg, mesh=mesh)


def train_step_streamed(state: TrainState, labeled: dict[str, jax.Array],
                        unlabeled: dict[str, jax.Array], *, model: nn.Module,
                        cfg: StepConfig, mesh: Mesh | None = None):
  """Like :func:`train_step`, with the unlabeled batch fed by the host (tf.data stream)
  for datasets that do not fit in memory.

  ``unlabeled`` is either ``{image [B*mu, H, W, 3], label [B*mu]}`` (the views are made
  here, on the device), or ``{weak [K, B*mu, H, W, 3], strong [K, B*mu, H, W, 3],
  label [B*mu]}``: views already made by the host (e.g. ImageNet's random-resized crops),
  used as given, ``K = cfg.num_views``. The labeled view is made here in both cases.
  """
  key = step_key(cfg.seed, state.step)
  k_idx_l, _, k_aug = jax.random.split(key, 3)
  il = _shard(jax.random.randint(k_idx_l, (cfg.batch_size,), 0, labeled["y_l"].shape[0]),
              mesh)
  if "weak" in unlabeled:
    k_l = jax.random.split(k_aug, 3)[0]  # the labeled view's key of fixmatch_update
    return update_on_views(state, augment.weak(k_l, labeled["x_l"][il]), labeled["y_l"][il],
                           unlabeled["weak"], unlabeled["strong"], unlabeled["label"],
                           model=model, cfg=cfg, mesh=mesh)
  return fixmatch_update(state, k_aug, labeled["x_l"][il], labeled["y_l"][il],
                         unlabeled["image"], unlabeled["label"], model=model, cfg=cfg,
                         mesh=mesh)


def randaugment_cutout(key: jax.Array, images) -> jax.Array:
  """The strong view's pixel ops alone on host-made crops: RandAugment (2 ops) and
  Cutout of :func:`dlpl_jax.augment.strong`, without its flip and translation (the
  host's random-resized crop and flip replace them).

  Args:
    key: PRNG key; images: ``[B, H, W, 3]`` uint8.

  Returns:
    float32 ``[B, H, W, 3]``, integer values in [0, 255].
  """
  b, h, w, _ = images.shape
  p = augment.sample_strong_params(key, b, h, w)
  py, px = int(h * augment.PAD_FRACTION), int(w * augment.PAD_FRACTION)
  still = augment.WeakParams(flip=jnp.zeros((b,), bool), dy=jnp.full((b,), py, jnp.int32),
                             dx=jnp.full((b,), px, jnp.int32))  # the identity crop
  return augment.apply_strong(images, p._replace(weak=still))


def train_step_views(state: TrainState, labeled: dict[str, jax.Array],
                     unlabeled: dict[str, jax.Array], *, model: nn.Module, cfg: StepConfig,
                     mesh: Mesh | None = None):
  """One step on host-made views (the ImageNet input, :mod:`dlpl_jax.imagenet`).

  Args:
    state: the train state.
    labeled: ``{image [B, H, W, 3] uint8, label [B]}``: the labeled view, used as given.
    unlabeled: ``{weak [K, B*mu, H, W, 3], strong [K, B*mu, H, W, 3], label [B*mu]}``
      uint8 crops; RandAugment + Cutout are applied here to each strong crop (its own
      key per view). With ``cfg.clip_fallback > 0`` also ``clip_label``, ``clip_prob``.
    model, cfg, mesh: static.

  Returns:
    ``(new_state, metrics)``.
  """
  keys = jax.random.split(step_key(cfg.seed, state.step), cfg.num_views)
  strong = [randaugment_cutout(keys[i], unlabeled["strong"][i])
            for i in range(cfg.num_views)]
  weak = [unlabeled["weak"][i].astype(jnp.float32) for i in range(cfg.num_views)]
  return update_on_views(state, labeled["image"].astype(jnp.float32), labeled["label"],
                         weak, strong, unlabeled["label"], model=model, cfg=cfg, mesh=mesh,
                         clip_label=unlabeled.get("clip_label"),
                         clip_prob=unlabeled.get("clip_prob"))


def eval_step(params, batch_stats, x_test: jax.Array, y_test: jax.Array, start, *,
              model: nn.Module, num_classes: int, batch: int, mesh: Mesh | None = None):
  """Sums over one evaluation batch sliced on the device from the padded test set.

  Args:
    params: (EMA) params; batch_stats: BN statistics.
    x_test: ``[N_pad, H, W, 3]`` uint8 test images, padded to a multiple of ``batch``.
    y_test: ``[N_pad]`` labels, -1 on padding.
    start: first index of this batch (traced).
    mesh: the device mesh; the batch is sharded along its ``"data"`` axis.

  Returns:
    dict of ``correct [C]``, ``count [C]`` (per true class), ``predicted [C]`` counts,
    ``feature_sum [C, D]`` (penultimate features summed per true class).
  """
  x = _shard(jax.lax.dynamic_slice_in_dim(x_test, start, batch), mesh)
  y = _shard(jax.lax.dynamic_slice_in_dim(y_test, start, batch), mesh)
  logits, feats = model.apply({"params": params, "batch_stats": batch_stats}, x,
                              train=False, return_features=True)
  valid = (y >= 0).astype(jnp.float32)
  true = jax.nn.one_hot(y, num_classes, dtype=jnp.float32) * valid[:, None]
  pred = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.float32) * valid[:, None]
  return {"correct": jnp.sum(true * pred, 0), "count": jnp.sum(true, 0),
          "predicted": jnp.sum(pred, 0), "feature_sum": true.T @ feats.astype(jnp.float32)}


# Module-level jitted entry points: their caches are reused across calls in a process.
# (No buffer donation: the state is small next to the activations, and an in-flight
# async checkpoint may still read the previous state's buffers.)
jit_train_step = jax.jit(train_step, static_argnames=("model", "cfg", "mesh"))
jit_train_step_streamed = jax.jit(train_step_streamed,
                                  static_argnames=("model", "cfg", "mesh"))
jit_train_step_views = jax.jit(train_step_views, static_argnames=("model", "cfg", "mesh"))
jit_eval_step = jax.jit(eval_step, static_argnames=("model", "num_classes", "batch", "mesh"))


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with axis ``"data"``."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh):
  """Places host arrays (identical on every process) replicated on the mesh."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree_util.tree_map(put, tree)


def pad_test_set(x: np.ndarray, y: np.ndarray, batch: int):
  """Pads the test set to a multiple of ``batch`` (label -1 marks padding)."""
  n_pad = (-len(y)) % batch
  if n_pad:
    x = np.concatenate([x, np.zeros((n_pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, -np.ones(n_pad, y.dtype)])
  return x, y


def eval_variables(state: TrainState, which: str = "ema"):
  """``(params, batch_stats)`` to evaluate: the EMA of the params (``ema``, with the
  student's BN statistics, as before) or the student itself (``student``, as the
  official ImageNet code)."""
  if which == "ema":
    return state.ema_params, state.batch_stats
  if which == "student":
    return state.params, state.batch_stats
  raise ValueError(f"eval params must be 'ema' or 'student', got {which!r}")


def evaluate(state: TrainState, x_test, y_test, *, model, num_classes: int, batch: int,
             mesh: Mesh | None = None, params: str = "ema"):
  """Evaluation (EMA weights by default, see :func:`eval_variables`) on the (padded,
  device-resident) test set.

  Returns:
    dict with ``eval/top1`` (%), ``eval/per_class`` (``[C]`` %; NaN, written as null,
    for a class with no test image, e.g. with a small ``eval_examples``),
    ``eval/predicted`` (``[C]`` counts) and ``class_features`` (``[C, D]`` class-mean
    features).
  """
  p, bs = eval_variables(state, params)
  sums = None
  for start in range(0, x_test.shape[0], batch):
    out = jit_eval_step(p, bs, x_test, y_test, start,
                        model=model, num_classes=num_classes, batch=batch, mesh=mesh)
    sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
  return _eval_summary(sums)


def evaluate_batches(state: TrainState, batches, *, model, num_classes: int, batch: int,
                     mesh: Mesh, params: str = "ema"):
  """As :func:`evaluate`, on streamed batches: each ``{image [b, H, W, 3], label [b]}``
  is this process's part (label -1 = padding) of a global batch of ``batch``."""
  p, bs = eval_variables(state, params)
  sharding = NamedSharding(mesh, P("data"))
  sums = None
  for b in batches:
    x = jax.make_array_from_process_local_data(sharding, np.asarray(b["image"]))
    y = jax.make_array_from_process_local_data(sharding, np.asarray(b["label"], np.int32))
    out = jit_eval_step(p, bs, x, y, 0, model=model, num_classes=num_classes,
                        batch=batch, mesh=mesh)
    sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
  return _eval_summary(sums)


def _eval_summary(sums) -> dict:
  sums = jax.device_get(sums)
  count = np.maximum(sums["count"], 1)
  return {
      "eval/top1": float(100.0 * sums["correct"].sum() / count.sum()),
      "eval/per_class": np.where(sums["count"] > 0, 100.0 * sums["correct"] / count,
                                 np.nan).tolist(),
      "eval/predicted": sums["predicted"].astype(int).tolist(),
      "class_features": sums["feature_sum"] / count[:, None],
  }
