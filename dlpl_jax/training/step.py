"""One FixMatch / DebiasPL training step on a batch of views, and its loss terms.

``train_step(state, batch, *, model, cfg)`` is a pure function of the state and one
batch format, whatever made the views (:mod:`dlpl_jax.training.inputs`)::

  batch = {"image_l": [B, H, W, 3] the labeled view,  "label_l": [B] int32,
           "weak":    [K, Bu, H, W, 3] weak views,      "strong":  [K, Bu, H, W, 3],
           "label_u": [Bu] true labels (monitoring only),
           "clip_label", "clip_prob": [Bu] (the CLIP fallback only)}

with pixels in [0, 255] and ``Bu = B * mu``. The student sees the labeled view, the weak
views (unless the EMA teacher gives their logits) and the strong views as ONE batch, so
its BatchNorm statistics are over all of them. :class:`StepConfig` chooses the loss terms
(all recipe options off by default, and then the step is FixMatch's or DebiasPL's
exactly): the supervised term, the unlabeled term over one or K views, the CLIP
fallback, CLD, and where the weak logits come from (the student, or an EMA teacher).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
from jax.sharding import Mesh
import jax.numpy as jnp
import optax

from dlpl_jax import loss as loss_lib
from dlpl_jax import multiview
from dlpl_jax import pseudo_label
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training.state import TeacherTrainState, TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static (hashable) numbers of a train step and of its input stage.

  ``tau`` is 0 for FixMatch (FixMatch exactly). ``mesh``: the device mesh whose
  ``"data"`` axis shards every batch (None: no sharding constraint).
  """
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
  mesh: Mesh | None = None


class Terms(NamedTuple):
  """The loss terms of one step: scalars; ``cld`` and ``clip`` are None where off."""
  loss_x: jax.Array
  unlabeled: pseudo_label.UnlabeledLoss
  cld: jax.Array | None = None
  clip: tuple[jax.Array, jax.Array] | None = None  # (L_clip, the [Bu] fallback mask)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               cfg: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the student, the EMA weights, the marginal and the counters.

  Args:
    state: the train state (a :class:`TeacherTrainState` when ``cfg.teacher``).
    batch: the views, in the format of the module docstring.
    model: the Flax model (static).
    cfg: the step's static numbers.

  Returns:
    ``(new_state, metrics)``: scalar metrics ``train/loss``, ``train/loss_x``,
    ``train/loss_u``, ``train/mask_rate``, ``train/grad_norm``, ``train/param_norm``
    (of the updated params, which catches a step that made them non-finite), plus
    ``train/loss_cld`` with CLD and ``train/loss_clip``, ``train/clip_rate`` with the
    CLIP fallback.
  """
  check_batch(state, batch, cfg)
  teacher = teacher_logits(state, batch["weak"], model=model, cfg=cfg) if cfg.teacher else None
  grads, (batch_stats, terms) = jax.grad(objective, has_aux=True)(
      state.params, state, batch, teacher, model=model, cfg=cfg)
  new_state = apply_update(state, grads, batch_stats, terms.unlabeled, batch["label_u"], cfg)
  return new_state, step_metrics(terms, grads, new_state.params, cfg)


def check_batch(state: TrainState, batch: dict, cfg: StepConfig) -> None:
  """Refuses, at trace time, a batch or state that does not fit the config."""
  if cfg.teacher != isinstance(state, TeacherTrainState):
    raise ValueError(f"the step's teacher = {cfg.teacher} but the state is a "
                     f"{type(state).__name__}; create it from the same config")
  for key in ("weak", "strong"):
    if batch[key].ndim != 5 or batch[key].shape[0] != cfg.num_views:
      raise ValueError(f"batch[{key!r}] must be [K = {cfg.num_views}, Bu, H, W, 3], got "
                       f"shape {batch[key].shape}")
  if cfg.clip_fallback > 0 and not {"clip_label", "clip_prob"} <= set(batch):
    raise ValueError("cfg.clip_fallback > 0 needs clip_label and clip_prob in the batch")


def objective(params, state: TrainState, batch: dict, teacher: jax.Array | None, *,
              model: nn.Module, cfg: StepConfig):
  """The step's loss of the student ``params`` (:func:`total_loss`), with
  ``(its new BN statistics, Terms)`` as the auxiliary output."""
  logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                student_images(batch, cfg), train=True,
                                mutable=["batch_stats"])
  logits_l, logits_w, logits_s = split_logits(logits, batch, teacher)
  u = unlabeled_term(logits_w, logits_s, state.marginal, cfg)
  clip = None
  if cfg.clip_fallback > 0:
    clip = clip_term(logits_w, logits_s, state.marginal, u, batch, cfg)
    u = u._replace(loss=(u.loss + clip[0]) / 2)
  cld = cld_term(logits_w, logits_s, u, cfg) if cfg.cld_weight > 0 else None
  terms = Terms(supervised_term(logits_l, batch["label_l"]), u, cld, clip)
  return total_loss(terms, cfg), (updates["batch_stats"], terms)


def student_images(batch: dict, cfg: StepConfig) -> jax.Array:
  """The student's one batch, sharded: the labeled view, the K weak views (unless the
  teacher gives their logits), the K strong views, ``[B + (K) Bu + K Bu, H, W, 3]``."""
  def rows(views):  # [K, Bu, H, W, 3] -> [K Bu, H, W, 3], view after view
    return views.reshape(-1, *views.shape[2:])
  parts = [batch["image_l"], *([] if cfg.teacher else [rows(batch["weak"])]),
           rows(batch["strong"])]
  return mesh_lib.shard(jnp.concatenate(parts, axis=0), cfg.mesh)


def split_logits(logits: jax.Array, batch: dict, teacher: jax.Array | None):
  """``(labeled [B, C], weak [K, Bu, C], strong [K, Bu, C])`` from the student's logits;
  the weak ones are the teacher's when it gives them."""
  n_l = batch["image_l"].shape[0]
  k, n_u = batch["weak"].shape[:2]
  views = logits[n_l:].reshape(-1, k, n_u, logits.shape[-1])  # [(weak,) strong, K, Bu, C]
  if teacher is not None:
    return logits[:n_l], teacher, views[0]
  return logits[:n_l], views[0], views[1]


def teacher_logits(state: TeacherTrainState, weak: jax.Array, *, model: nn.Module,
                   cfg: StepConfig) -> jax.Array:
  """The EMA teacher's logits of the weak views ``[K, Bu, H, W, 3]``, in eval mode with
  its own params and BN statistics: ``[K, Bu, C]`` float32, no gradient."""
  k, n_u = weak.shape[:2]
  x = mesh_lib.shard(weak.reshape(k * n_u, *weak.shape[2:]), cfg.mesh)
  logits = model.apply({"params": state.teacher_params,
                        "batch_stats": state.teacher_batch_stats}, x, train=False)
  return jax.lax.stop_gradient(logits.astype(jnp.float32)).reshape(k, n_u, -1)


def supervised_term(logits_l: jax.Array, labels: jax.Array) -> jax.Array:
  """``L_x``: the mean cross-entropy of the labeled view."""
  return jnp.mean(loss_lib.cross_entropy(logits_l, labels))


def unlabeled_term(logits_w: jax.Array, logits_s: jax.Array, marginal: jax.Array,
                   cfg: StepConfig) -> pseudo_label.UnlabeledLoss:
  """``L_u`` and the updated marginal from ``[K, Bu, C]`` weak and strong logits: one view
  is :func:`dlpl_jax.pseudo_label.unlabeled_loss`, K views the official combination
  (:func:`dlpl_jax.multiview.multiview_unlabeled_loss`)."""
  if cfg.num_views == 1:
    return pseudo_label.unlabeled_loss(logits_w[0], logits_s[0], marginal, cfg.tau,
                                       cfg.threshold, cfg.marginal_momentum)
  return multiview.multiview_unlabeled_loss(logits_w, logits_s, marginal, cfg.tau,
                                            cfg.threshold, cfg.marginal_momentum)


def clip_term(logits_w: jax.Array, logits_s: jax.Array, marginal: jax.Array,
              u: pseudo_label.UnlabeledLoss, batch: dict, cfg: StepConfig):
  """The zero-shot recipe's CLIP fallback: ``(L_clip, fallback mask [Bu])``
  (:func:`dlpl_jax.multiview.clip_fallback_loss`); the step then trains on
  ``(L_u + L_clip) / 2``."""
  return multiview.clip_fallback_loss(logits_w, logits_s, marginal, u.marginal,
                                      batch["clip_label"], batch["clip_prob"], cfg.tau,
                                      cfg.threshold, cfg.clip_fallback)


def cld_term(logits_w: jax.Array, logits_s: jax.Array, u: pseudo_label.UnlabeledLoss,
             cfg: StepConfig) -> jax.Array:
  """The mean CLD loss (:func:`dlpl_jax.loss.cld_loss`) on what the official code gives
  it: with one view the strong logits AFTER the margin shift (tau log p̂_new) and the
  weak logits; with K views the means of the K strong (unshifted) and K weak logits."""
  if cfg.num_views == 1:
    strong = logits_s[0].astype(jnp.float32) + cfg.tau * loss_lib.log_marginal(u.marginal)
    weak = logits_w[0]
  else:
    strong, weak = (jnp.sum(z.astype(jnp.float32), 0) / cfg.num_views
                    for z in (logits_s, logits_w))
  return jnp.mean(loss_lib.cld_loss(strong, weak, temperature=cfg.cld_temperature))


def total_loss(terms: Terms, cfg: StepConfig) -> jax.Array:
  """``L_x + lambda_u L_u`` (+ ``cld_weight L_cld`` with CLD)."""
  total = terms.loss_x + cfg.lambda_u * terms.unlabeled.loss
  if terms.cld is not None:
    total = total + cfg.cld_weight * terms.cld
  return total


def ema(old, new, decay: float):
  """``decay * old + (1 - decay) * new``, leaf by leaf (weights or BN statistics)."""
  return jax.tree_util.tree_map(lambda o, n: decay * o + (1 - decay) * n, old, new)


def apply_update(state: TrainState, grads, batch_stats, u: pseudo_label.UnlabeledLoss,
                 labels_u: jax.Array, cfg: StepConfig) -> TrainState:
  """The state after the step: SGD on the params, their EMA, the student's new BN
  statistics, the new marginal, the pseudo-label counters and, with the teacher,
  ``teacher = m teacher + (1 - m) student`` for the params and the BN statistics."""
  new = state.apply_gradients(grads=grads)
  onehot_true = jax.nn.one_hot(labels_u, cfg.num_classes, dtype=jnp.float32)
  onehot_pl = jax.nn.one_hot(u.labels, cfg.num_classes, dtype=jnp.float32)
  new = new.replace(
      batch_stats=batch_stats, ema_params=ema(state.ema_params, new.params, cfg.ema_decay),
      marginal=u.marginal, confusion=state.confusion + onehot_true.T @ onehot_pl,
      confusion_masked=state.confusion_masked
      + (onehot_true * u.mask[:, None]).T @ onehot_pl)
  if cfg.teacher:
    new = new.replace(
        teacher_params=ema(state.teacher_params, new.params, cfg.teacher_momentum),
        teacher_batch_stats=ema(state.teacher_batch_stats, batch_stats,
                                cfg.teacher_momentum))
  return new


def step_metrics(terms: Terms, grads, params, cfg: StepConfig) -> dict[str, jax.Array]:
  """The step's scalar metrics (see :func:`train_step`)."""
  metrics = {
      "train/loss": total_loss(terms, cfg),
      "train/loss_x": terms.loss_x,
      "train/loss_u": terms.unlabeled.loss,
      "train/mask_rate": jnp.mean(terms.unlabeled.mask),
      "train/grad_norm": optax.global_norm(grads),
      "train/param_norm": optax.global_norm(params),
  }
  if terms.cld is not None:
    metrics["train/loss_cld"] = terms.cld
  if terms.clip is not None:
    metrics["train/loss_clip"] = terms.clip[0]
    metrics["train/clip_rate"] = jnp.mean(terms.clip[1])
  return metrics
