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

from dlpl_jax.augment.pillow import OP_NAMES
from dlpl_jax.augment.pillow import AUTO_CONTRAST
from dlpl_jax.augment.pillow import BRIGHTNESS
from dlpl_jax.augment.pillow import COLOR
from dlpl_jax.augment.pillow import CONTRAST
from dlpl_jax.augment.pillow import EQUALIZE
from dlpl_jax.augment.pillow import IDENTITY
from dlpl_jax.augment.pillow import POSTERIZE
from dlpl_jax.augment.pillow import ROTATE
from dlpl_jax.augment.pillow import SHARPNESS
from dlpl_jax.augment.pillow import SHEAR_X
from dlpl_jax.augment.pillow import SHEAR_Y
from dlpl_jax.augment.pillow import SOLARIZE
from dlpl_jax.augment.pillow import TRANSLATE_X
from dlpl_jax.augment.pillow import TRANSLATE_Y
from dlpl_jax.augment.pillow import NUM_OPS
from dlpl_jax.augment.pillow import N_OPS_PER_IMAGE
from dlpl_jax.augment.pillow import MAX_LEVEL
from dlpl_jax.augment.pillow import PARAMETER_MAX
from dlpl_jax.augment.pillow import OP_PROB
from dlpl_jax.augment.pillow import PAD_FRACTION
from dlpl_jax.augment.pillow import CUTOUT_FRACTION
from dlpl_jax.augment.pillow import CUTOUT_FILL
from dlpl_jax.augment.pillow import AFFINE_FILL
from dlpl_jax.augment.pillow import level_to_arg
from dlpl_jax.augment.ops import apply_lut
from dlpl_jax.augment.ops import histogram
from dlpl_jax.augment.ops import autocontrast_lut
from dlpl_jax.augment.ops import equalize_lut
from dlpl_jax.augment.ops import posterize_lut
from dlpl_jax.augment.ops import solarize_lut
from dlpl_jax.augment.ops import luma
from dlpl_jax.augment.ops import smooth
from dlpl_jax.augment.ops import blend
from dlpl_jax.augment.ops import affine_fixed
from dlpl_jax.augment.ops import identity
from dlpl_jax.augment.ops import auto_contrast
from dlpl_jax.augment.ops import equalize
from dlpl_jax.augment.ops import posterize
from dlpl_jax.augment.ops import solarize
from dlpl_jax.augment.ops import brightness
from dlpl_jax.augment.ops import color
from dlpl_jax.augment.ops import contrast
from dlpl_jax.augment.ops import sharpness
from dlpl_jax.augment.ops import rotate
from dlpl_jax.augment.ops import shear_x
from dlpl_jax.augment.ops import shear_y
from dlpl_jax.augment.ops import translate_x
from dlpl_jax.augment.ops import translate_y
from dlpl_jax.augment.ops import cutout
from dlpl_jax.augment.ops import OPS
from dlpl_jax.augment.randaugment import WeakParams
from dlpl_jax.augment.randaugment import StrongParams
from dlpl_jax.augment.randaugment import sample_weak_params
from dlpl_jax.augment.randaugment import sample_strong_params
from dlpl_jax.augment.views import apply_weak
from dlpl_jax.augment.views import apply_strong
from dlpl_jax.augment.views import weak
from dlpl_jax.augment.views import strong
from dlpl_jax.augment.views import randaugment_cutout

__all__ = [
    "OP_NAMES", "AUTO_CONTRAST", "BRIGHTNESS", "COLOR", "CONTRAST", "EQUALIZE",
    "IDENTITY", "POSTERIZE", "ROTATE", "SHARPNESS", "SHEAR_X", "SHEAR_Y", "SOLARIZE",
    "TRANSLATE_X", "TRANSLATE_Y", "NUM_OPS", "N_OPS_PER_IMAGE", "MAX_LEVEL",
    "PARAMETER_MAX", "OP_PROB", "PAD_FRACTION", "CUTOUT_FRACTION", "CUTOUT_FILL",
    "AFFINE_FILL", "level_to_arg", "apply_lut", "histogram", "autocontrast_lut",
    "equalize_lut", "posterize_lut", "solarize_lut", "luma", "smooth", "blend",
    "affine_fixed", "identity", "auto_contrast", "equalize", "posterize", "solarize",
    "brightness", "color", "contrast", "sharpness", "rotate", "shear_x", "shear_y",
    "translate_x", "translate_y", "cutout", "OPS", "WeakParams", "StrongParams",
    "sample_weak_params", "sample_strong_params", "apply_weak", "apply_strong", "weak",
    "strong", "randaugment_cutout",
]
