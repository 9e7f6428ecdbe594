"""FixMatch / DebiasPL training: the TrainState, the jitted data-parallel step, the loop.

Arrows point one way: this module composes the pure math (:mod:`dlpl_jax.pseudo_label`),
augmentation (:mod:`dlpl_jax.augment`), the model, the data and the checkpoints.

Data parallelism is jax.jit over a 1-D device mesh with a ``"data"`` axis: the state and
the in-memory datasets are replicated, each step's batch is sharded along ``"data"``.
The formulas are written in the global view, so batch-norm statistics, the losses and
the class-marginal update are over the GLOBAL batch (the same numbers on 1 or N devices).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax

from dlpl_jax import augment
from dlpl_jax import configs
from dlpl_jax import loss as loss_lib
from dlpl_jax import models
from dlpl_jax import pseudo_label


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

  @classmethod
  def from_config(cls, c) -> "StepConfig":
    return cls(c.num_classes, c.batch_size, c.mu, configs.effective_tau(c), c.threshold,
               c.marginal_momentum, c.lambda_u, c.ema_decay, c.seed)


def learning_rate_schedule(config) -> optax.Schedule:
  """FixMatch's lr * cos(pi * cosine_factor * step / total_steps)."""
  return _schedule(config.lr, config.cosine_factor, config.total_steps)


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
  """SGD with Nesterov momentum and FixMatch's cosine schedule; weight decay is added
  to the gradient before momentum (coupled, as torch.optim.SGD(weight_decay=...) in
  FixMatch-pytorch), on kernels only.

  Cached on the config's numbers: the optimizer is a static part of the TrainState's
  tree structure, so an equal config must give the same object for jit's cache to hit.
  """
  return _optimizer(config.lr, config.cosine_factor, config.total_steps,
                    config.weight_decay, config.momentum, config.nesterov)


@functools.lru_cache(maxsize=None)
def _optimizer(lr, cosine_factor, total_steps, weight_decay, momentum, nesterov):
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=_decay_mask),
      optax.sgd(_schedule(lr, cosine_factor, total_steps), momentum=momentum,
                nesterov=nesterov))


def build_model(config) -> nn.Module:
  """The config's model (cached, so ``state.apply_fn`` is the same object per config)."""
  return _model(config.model, config.num_classes, config.dtype)


@functools.lru_cache(maxsize=None)
def _model(name: str, num_classes: int, dtype: str) -> nn.Module:
  return models.create_model(name, num_classes,
                             dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)


def create_train_state(config, model: nn.Module, image_shape: tuple[int, ...]) -> TrainState:
  """A fresh state: params from ``PRNGKey(seed)``, uniform marginal, zero counters."""
  variables = model.init(jax.random.PRNGKey(config.seed),
                         jnp.zeros((2, *image_shape), jnp.uint8), train=False)
  params = variables["params"]
  c = config.num_classes
  return TrainState.create(
      apply_fn=model.apply, params=params, tx=make_optimizer(config),
      batch_stats=variables.get("batch_stats", {}),
      ema_params=jax.tree_util.tree_map(jnp.copy, params),
      marginal=jnp.full((c,), 1.0 / c, jnp.float32),
      confusion=jnp.zeros((c, c), jnp.float32),
      confusion_masked=jnp.zeros((c, c), jnp.float32))


def _shard(x, mesh: Mesh | None):
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))


def fixmatch_update(state: TrainState, key: jax.Array, x_l, y_l, x_u, y_u, *,
                    model: nn.Module, cfg: StepConfig, mesh: Mesh | None):
  """One FixMatch/DebiasPL update on a drawn batch (uint8 images, pre-augmentation).

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
  n_l, n_u = x_l.shape[0], x_u.shape[0]
  images = jnp.concatenate([augment.weak(k_l, x_l), augment.weak(k_w, x_u),
                            augment.strong(k_s, x_u)], axis=0)
  images = _shard(images, mesh)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    logits_l = logits[:n_l]
    logits_w, logits_s = logits[n_l:n_l + n_u], logits[n_l + n_u:]
    loss_x = jnp.mean(loss_lib.cross_entropy(logits_l, y_l))
    u = pseudo_label.unlabeled_loss(logits_w, logits_s, state.marginal, cfg.tau,
                                    cfg.threshold, cfg.marginal_momentum)
    total = loss_x + cfg.lambda_u * u.loss
    return total, (updates["batch_stats"], loss_x, u)

  grads, (batch_stats, loss_x, u) = jax.grad(loss_fn, has_aux=True)(state.params)
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
  # Pseudo-label accuracy and class counts come from the confusion counters (one
  # definition, in dlpl_jax.metrics); the norm of the UPDATED params catches a step that
  # turned them non-finite while its loss (computed before the update) was finite.
  metrics = {
      "train/loss": loss_x + cfg.lambda_u * u.loss,
      "train/loss_x": loss_x,
      "train/loss_u": u.loss,
      "train/mask_rate": jnp.mean(u.mask),
      "train/grad_norm": optax.global_norm(grads),
      "train/param_norm": optax.global_norm(new_state.params),
  }
  return new_state, metrics


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
  for datasets that do not fit in memory; ``unlabeled`` = {image [B*mu,...], label}."""
  key = step_key(cfg.seed, state.step)
  k_idx_l, _, k_aug = jax.random.split(key, 3)
  il = _shard(jax.random.randint(k_idx_l, (cfg.batch_size,), 0, labeled["y_l"].shape[0]),
              mesh)
  return fixmatch_update(state, k_aug, labeled["x_l"][il], labeled["y_l"][il],
                         unlabeled["image"], unlabeled["label"], model=model, cfg=cfg,
                         mesh=mesh)


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


def evaluate(state: TrainState, x_test, y_test, *, model, num_classes: int, batch: int,
             mesh: Mesh | None = None):
  """EMA-weight evaluation on the (padded, device-resident) test set.

  Returns:
    dict with ``eval/top1`` (%), ``eval/per_class`` (``[C]`` %), ``eval/predicted``
    (``[C]`` counts) and ``class_features`` (``[C, D]`` class-mean features).
  """
  sums = None
  for start in range(0, x_test.shape[0], batch):
    out = jit_eval_step(state.ema_params, state.batch_stats, x_test, y_test, start,
                        model=model, num_classes=num_classes, batch=batch, mesh=mesh)
    sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = np.maximum(sums["count"], 1)
  return {
      "eval/top1": float(100.0 * sums["correct"].sum() / count.sum()),
      "eval/per_class": (100.0 * sums["correct"] / count).tolist(),
      "eval/predicted": sums["predicted"].astype(int).tolist(),
      "class_features": sums["feature_sum"] / count[:, None],
  }
