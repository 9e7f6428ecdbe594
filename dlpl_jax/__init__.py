"""dlpl_jax: DebiasPL (CVPR 2022) on FixMatch, in JAX/Flax.

The pure math is re-exported here; the rest lives in subpackages: ``augment``,
``models``, ``data``, ``training``, ``tools`` (docs/ARCHITECTURE.md). Importing the
package does not import TensorFlow: ``dlpl_jax.data.tfds`` and ``dlpl_jax.data.imagenet``
import it when they read a dataset, the TensorBoard writer of
``dlpl_jax.training.metrics`` when it writes, and ``python -m dlpl_jax.augment --show``.
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
