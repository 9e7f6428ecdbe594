"""FixMatch's weak and strong views as pure, jit-compiled JAX functions.

The two functions the trainer calls::

  weak(key, images)    # [B, H, W, 3] uint8 or float in [0, 255] -> float32 [B, H, W, 3]
  strong(key, images)  # same contract

``strong`` is kekmodel/FixMatch-pytorch's RandAugmentMC(n=2, m=10) and Cutout after the
weak view's flip and crop, equal to Pillow pixel for pixel. One job per file, each
described in its docstring:

* ``pillow.py``: the reference's constants (op names and indices, :func:`level_to_arg`
  and the table of magnitudes) and Pillow's exact arithmetic as float64 tables.
* ``ops.py``: single-image primitives (histogram, LUTs, luma, blend, smooth, 16.16
  fixed-point affine, :func:`cutout`) and the 14 ops (:data:`OPS`); the exactness notes.
* ``randaugment.py``: the per-image draws (:class:`WeakParams`, :class:`StrongParams`,
  :func:`sample_weak_params`, :func:`sample_strong_params`) and the per-image views;
  how they run fast under vmap.
* ``views.py``: the batched views and their input checks: :func:`weak`,
  :func:`strong`, :func:`apply_weak`, :func:`apply_strong`, :func:`randaugment_cutout`.
* ``show.py``: ``python -m dlpl_jax.augment --show``, a PNG grid of views of real
  CIFAR-10 images. Not imported here: importing this package imports neither
  TensorFlow nor matplotlib.

Shapes: "image" means float32 ``[H, W, 3]`` holding integers in [0, 255]; "images"
means ``[B, H, W, 3]``.
"""

from dlpl_jax.augment.ops import cutout
from dlpl_jax.augment.ops import OPS
from dlpl_jax.augment.pillow import level_to_arg
from dlpl_jax.augment.pillow import NUM_OPS
from dlpl_jax.augment.pillow import OP_NAMES
from dlpl_jax.augment.pillow import PAD_FRACTION
from dlpl_jax.augment.randaugment import sample_strong_params
from dlpl_jax.augment.randaugment import sample_weak_params
from dlpl_jax.augment.randaugment import StrongParams
from dlpl_jax.augment.randaugment import WeakParams
from dlpl_jax.augment.views import apply_strong
from dlpl_jax.augment.views import apply_weak
from dlpl_jax.augment.views import randaugment_cutout
from dlpl_jax.augment.views import strong
from dlpl_jax.augment.views import weak
