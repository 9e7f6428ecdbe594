"""dlpl_jax: DebiasPL (CVPR 2022) on FixMatch, in JAX/Flax.

The pure math is re-exported here; the rest lives in submodules (``dlpl_jax.augment``,
``dlpl_jax.models``, ``dlpl_jax.train``, ...). Importing the package does not import
TensorFlow. TensorFlow is imported only on use: by ``dlpl_jax.data`` and
``dlpl_jax.imagenet`` when they read a dataset, by the TensorBoard writer of
``dlpl_jax.metrics``, and by ``python -m dlpl_jax.augment --show`` (real images).
"""

from dlpl_jax import loss
from dlpl_jax import pseudo_label
from dlpl_jax.loss import adaptive_margin
from dlpl_jax.loss import cross_entropy
from dlpl_jax.loss import MARGINAL_FLOOR
from dlpl_jax.pseudo_label import debias
from dlpl_jax.pseudo_label import hard_labels
from dlpl_jax.pseudo_label import unlabeled_loss
from dlpl_jax.pseudo_label import UnlabeledLoss
from dlpl_jax.pseudo_label import update_marginal

__version__ = "0.1.0"

__all__ = [
    "adaptive_margin", "cross_entropy", "MARGINAL_FLOOR", "debias", "hard_labels",
    "unlabeled_loss", "UnlabeledLoss", "update_marginal", "loss", "pseudo_label",
]
