"""The input stage (dlpl_jax/training/inputs.py): each step's batch of views from its
key, in the step's one batch format, from device-resident arrays, a host stream or host
crops. (The jitted programs with the step: tests/training/test_step.py and the loop.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlpl_jax import augment
from dlpl_jax.training import inputs
from dlpl_jax.training import setup


@pytest.fixture
def cfg(tiny_config):
  return setup.read(tiny_config()).step


@pytest.fixture
def arrays(tiny_data):
  return {"x_l": tiny_data.x_l, "y_l": tiny_data.y_l, "x_u": tiny_data.x_u,
          "y_u": tiny_data.y_u}


def _reference_draw(data, step, cfg):
  """The draw of the step before the input stage had its own module: indices, then one
  weak view of the labeled images and one weak and one strong view of the unlabeled."""
  k_idx_l, k_idx_u, k_aug = jax.random.split(inputs.step_key(cfg.seed, step), 3)
  il = jax.random.randint(k_idx_l, (cfg.batch_size,), 0, data["y_l"].shape[0])
  iu = jax.random.randint(k_idx_u, (cfg.batch_size * cfg.mu,), 0, data["y_u"].shape[0])
  k_l, k_w, k_s = jax.random.split(k_aug, 3)
  x_u = data["x_u"][np.asarray(iu)]
  return {"image_l": augment.weak(k_l, data["x_l"][np.asarray(il)]),
          "label_l": data["y_l"][np.asarray(il)],
          "weak": augment.weak(k_w, x_u)[None], "strong": augment.strong(k_s, x_u)[None],
          "label_u": data["y_u"][np.asarray(iu)]}, (il, iu)


def _assert_same(a, b):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_step_key():
  k = inputs.step_key(3, 5)
  np.testing.assert_array_equal(k, jax.random.fold_in(jax.random.PRNGKey(3), 5))
  assert not np.array_equal(k, inputs.step_key(3, 6))
  assert not np.array_equal(k, inputs.step_key(4, 5))


def test_in_memory_draw_is_the_step_keys_batch(arrays, cfg):
  batch = inputs.draw_in_memory(arrays, 2, cfg)
  want, _ = _reference_draw(arrays, 2, cfg)
  _assert_same(batch, want)
  assert batch["image_l"].shape == (4, 32, 32, 3) and batch["image_l"].dtype == jnp.float32
  assert batch["weak"].shape == batch["strong"].shape == (1, 8, 32, 32, 3)
  assert batch["label_l"].shape == (4,) and batch["label_u"].shape == (8,)
  # The same step draws the same batch (a resume), another step another one.
  _assert_same(inputs.draw_in_memory(arrays, 2, cfg), batch)
  other = inputs.draw_in_memory(arrays, 3, cfg)
  assert not np.array_equal(other["strong"], batch["strong"])


def test_k_views_have_their_own_keys(arrays, cfg):
  cfg2 = dataclasses.replace(cfg, num_views=2)
  key = jax.random.PRNGKey(11)
  x_l, y_l = arrays["x_l"][:4], arrays["y_l"][:4]
  x_u, y_u = arrays["x_u"][:8], arrays["y_u"][:8]
  one = inputs.views(key, x_l, y_l, x_u, y_u, cfg)
  two = inputs.views(key, x_l, y_l, x_u, y_u, cfg2)
  k_l, k_w, k_s = jax.random.split(key, 3)
  np.testing.assert_array_equal(one["weak"][0], augment.weak(k_w, x_u))
  np.testing.assert_array_equal(one["strong"][0], augment.strong(k_s, x_u))
  assert two["weak"].shape == two["strong"].shape == (2, 8, 32, 32, 3)
  for i, (kw, ks) in enumerate(zip(jax.random.split(k_w, 2), jax.random.split(k_s, 2))):
    np.testing.assert_array_equal(two["weak"][i], augment.weak(kw, x_u))
    np.testing.assert_array_equal(two["strong"][i], augment.strong(ks, x_u))
  assert not np.array_equal(two["strong"][0], two["strong"][1])
  # The labeled view and the labels do not depend on K.
  np.testing.assert_array_equal(two["image_l"], one["image_l"])
  np.testing.assert_array_equal(one["image_l"], augment.weak(k_l, x_l))
  np.testing.assert_array_equal(two["label_u"], y_u)
  np.testing.assert_array_equal(two["label_l"], y_l)


def test_streamed_draw_equals_the_in_memory_draw_of_the_same_images(arrays, cfg):
  """The labeled images are drawn with the same key; the host gives the unlabeled ones:
  given the images the in-memory draw took, the batches are equal."""
  _, (_, iu) = _reference_draw(arrays, 5, cfg)
  iu = np.asarray(iu)
  unlabeled = {"image": arrays["x_u"][iu], "label": arrays["y_u"][iu]}
  streamed = inputs.draw_streamed({"x_l": arrays["x_l"], "y_l": arrays["y_l"]}, unlabeled, 5,
                                  cfg)
  _assert_same(streamed, inputs.draw_in_memory(arrays, 5, cfg))


def test_host_crops_get_randaugment_and_cutout_per_view(cfg):
  rng = np.random.default_rng(0)
  cfg2 = dataclasses.replace(cfg, num_views=2)
  crops = lambda *shape: rng.integers(0, 256, shape).astype(np.uint8)
  labeled = {"image": crops(2, 16, 16, 3), "label": np.array([1, 2], np.int32)}
  unlabeled = {"weak": crops(2, 3, 16, 16, 3), "strong": crops(2, 3, 16, 16, 3),
               "label": np.array([0, 1, 2], np.int32),
               "clip_label": np.array([3, 4, 5], np.int32),
               "clip_prob": np.array([0.1, 0.5, 0.9], np.float32)}
  batch = inputs.from_crops(labeled, unlabeled, 7, cfg2)
  assert set(batch) == {"image_l", "label_l", "weak", "strong", "label_u", "clip_label",
                        "clip_prob"}
  np.testing.assert_array_equal(batch["image_l"], labeled["image"].astype(np.float32))
  assert batch["image_l"].dtype == jnp.float32 and batch["weak"].dtype == jnp.float32
  np.testing.assert_array_equal(batch["weak"], unlabeled["weak"].astype(np.float32))
  keys = jax.random.split(inputs.step_key(cfg.seed, 7), 2)
  for i in range(2):
    np.testing.assert_array_equal(batch["strong"][i],
                                  augment.randaugment_cutout(keys[i], unlabeled["strong"][i]))
  for k in ("label", "clip_label", "clip_prob"):
    np.testing.assert_array_equal(batch["label_u" if k == "label" else k], unlabeled[k])
  without_clip = {k: unlabeled[k] for k in ("weak", "strong", "label")}
  assert "clip_label" not in inputs.from_crops(labeled, without_clip, 7, cfg2)
