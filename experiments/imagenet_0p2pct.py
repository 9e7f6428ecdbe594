"""ImageNet, 0.2% labels (2-3 images per class), ResNet-50.

Reproduces: DebiasPL's 0.2% setting (official script
``scripts/0.2perc-ssl/train_DebiasPL.sh``): the 1% recipe (experiments/imagenet_1pct.py)
with marginal momentum 0.99 and CLD weight 0.1. The labeled set: per class
``max(1, round(0.2 n_c))`` of the ``n_c`` images of TFDS's 1% subset, drawn with
``labeled_seed`` (dlpl_jax/imagenet.py): 2,561 images on the real subset, 0.2% of the
training split. The official runs read a fixed list (``train_0.2p_index.csv``) that is
not distributed with the code, so the images differ from the paper's.

Command:
  make train CONFIG=experiments/imagenet_0p2pct.py \\
      ARGS="--config.init_checkpoint=res50_moco_eman_800ep.msgpack"
  make train CONFIG=experiments/imagenet_0p2pct.py:smoke ARGS="--config.data_dir=DIR"

Published top-1 (DebiasPL paper, Wang et al. CVPR 2022, its ImageNet table):
FixMatch 43.6 -> DebiasPL 51.6.
Runtime (an estimate, not measured): as the 1% config, about 17 h on one H100 at an
assumed ~3,000 trained images/s (200,150 steps of 704 trained + 640 teacher images).
"""

from experiments import _imagenet


def get_config(variant: str = ""):
  c = _imagenet.recipe("0p2pct", variant)
  c.marginal_momentum = 0.99
  c.cld_weight = 0.1
  return c
