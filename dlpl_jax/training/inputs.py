"""The input stage: each step's batch of views, made on the device, and the jitted
programs that run it with the step.

Three sources, one batch format (:mod:`dlpl_jax.training.step`):

* in memory (:func:`draw_in_memory`): the labeled and unlabeled images held on the
  device; the step's key draws the indices and augments, no host work per step;
* streamed (:func:`draw_streamed`): the unlabeled images come from the host (tf.data);
  the labeled ones are drawn on the device as above;
* host crops (:func:`from_crops`, ImageNet): the host cut the random-resized crops;
  RandAugment and Cutout of the strong crops run here.

Randomness is ``fold_in(PRNGKey(seed), step)`` (:func:`step_key`), so a resumed run
draws the same batches and augmentations as an uninterrupted one.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlpl_jax import augment
from dlpl_jax.training import mesh as mesh_lib
from dlpl_jax.training import step as step_lib
from dlpl_jax.training.step import StepConfig


def step_key(seed: int, step) -> jax.Array:
  """The PRNG key of a step: ``fold_in(PRNGKey(seed), step)``."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def views(key: jax.Array, x_l, y_l, x_u, y_u, cfg: StepConfig) -> dict[str, jax.Array]:
  """The step's views of drawn uint8 images: one weak view of the labeled ``x_l``
  ``[B, H, W, 3]``, K weak and K strong views of the unlabeled ``x_u`` ``[Bu, H, W, 3]``,
  each view with its own key (the one-view keys when K = 1)."""
  k_l, k_w, k_s = jax.random.split(key, 3)
  if cfg.num_views == 1:
    keys_w, keys_s = [k_w], [k_s]
  else:
    keys_w = list(jax.random.split(k_w, cfg.num_views))
    keys_s = list(jax.random.split(k_s, cfg.num_views))
  return {"image_l": augment.weak(k_l, x_l), "label_l": y_l,
          "weak": jnp.stack([augment.weak(k, x_u) for k in keys_w]),
          "strong": jnp.stack([augment.strong(k, x_u) for k in keys_s]),
          "label_u": y_u}


def draw_in_memory(data: dict[str, jax.Array], step, cfg: StepConfig) -> dict:
  """Draws the step's batch from device-resident arrays ``x_l [NL, H, W, 3]``, ``y_l``,
  ``x_u [NU, ...]``, ``y_u`` (uniformly, with replacement) and makes its views."""
  k_idx_l, k_idx_u, k_aug = jax.random.split(step_key(cfg.seed, step), 3)
  b = cfg.batch_size
  il = mesh_lib.shard(jax.random.randint(k_idx_l, (b,), 0, data["y_l"].shape[0]), cfg.mesh)
  iu = mesh_lib.shard(jax.random.randint(k_idx_u, (b * cfg.mu,), 0, data["y_u"].shape[0]),
                      cfg.mesh)
  return views(k_aug, data["x_l"][il], data["y_l"][il], data["x_u"][iu], data["y_u"][iu],
               cfg)


def draw_streamed(labeled: dict[str, jax.Array], unlabeled: dict[str, jax.Array], step,
                  cfg: StepConfig) -> dict:
  """As :func:`draw_in_memory`, with the unlabeled ``{image [Bu, H, W, 3], label [Bu]}``
  given by the host (tf.data, for datasets that do not fit in memory)."""
  k_idx_l, _, k_aug = jax.random.split(step_key(cfg.seed, step), 3)
  il = mesh_lib.shard(jax.random.randint(k_idx_l, (cfg.batch_size,), 0,
                                         labeled["y_l"].shape[0]), cfg.mesh)
  return views(k_aug, labeled["x_l"][il], labeled["y_l"][il], unlabeled["image"],
               unlabeled["label"], cfg)


def from_crops(labeled: dict[str, jax.Array], unlabeled: dict[str, jax.Array], step,
               cfg: StepConfig) -> dict:
  """The batch of host-made crops (the ImageNet input, :mod:`dlpl_jax.data.imagenet`).

  Args:
    labeled: ``{image [B, H, W, 3] uint8, label [B]}``: the labeled view, used as given.
    unlabeled: ``{weak [K, Bu, H, W, 3], strong [K, Bu, H, W, 3], label [Bu]}`` uint8
      crops, with ``clip_label``, ``clip_prob`` for the CLIP fallback; RandAugment +
      Cutout are applied here to each strong crop (its own key per view).
    step: the step (its key).
    cfg: the step's static numbers.
  """
  keys = jax.random.split(step_key(cfg.seed, step), cfg.num_views)
  strong = [augment.randaugment_cutout(keys[i], unlabeled["strong"][i])
            for i in range(cfg.num_views)]
  batch = {"image_l": labeled["image"].astype(jnp.float32), "label_l": labeled["label"],
           "weak": unlabeled["weak"].astype(jnp.float32), "strong": jnp.stack(strong),
           "label_u": unlabeled["label"]}
  return batch | {k: unlabeled[k] for k in ("clip_label", "clip_prob") if k in unlabeled}


# The jitted programs: the input stage and the step as one program. Module-level, so that
# their caches serve every call in a process. (No buffer donation: the state is small
# next to the activations, and a checkpoint may still read the previous state.)


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def in_memory_step(state, data, *, model: nn.Module, cfg: StepConfig):
  """:func:`draw_in_memory`, then :func:`dlpl_jax.training.step.train_step`."""
  return step_lib.train_step(state, draw_in_memory(data, state.step, cfg), model=model,
                             cfg=cfg)


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def streamed_step(state, labeled, unlabeled, *, model: nn.Module, cfg: StepConfig):
  """:func:`draw_streamed`, then the step."""
  return step_lib.train_step(state, draw_streamed(labeled, unlabeled, state.step, cfg),
                             model=model, cfg=cfg)


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def crops_step(state, labeled, unlabeled, *, model: nn.Module, cfg: StepConfig):
  """:func:`from_crops`, then the step."""
  return step_lib.train_step(state, from_crops(labeled, unlabeled, state.step, cfg),
                             model=model, cfg=cfg)
