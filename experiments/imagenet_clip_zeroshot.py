"""ImageNet without labels: CLIP zero-shot pseudo-labels, then DebiasPL, ResNet-50.

Reproduces: DebiasPL's zero-shot setting (official ``scripts/zsl/
train_DebiasPL_ImageNet.sh`` and ``main_DebiasPL_ZeroShot.py``): the images CLIP labels
with probability >= 0.95 form the labeled set (with CLIP's labels); the rest is the
unlabeled set. DebiasPL trains with the 1% recipe's numbers (threshold 0.8, tau 0.4,
CLD 0.3, teacher, 2 + 2 views, 50 epochs, MoCo-EMAN init) and marginal momentum 0.99,
plus the official fallback: where none of the model's debiased pseudo-labels (mean weak
view, each weak view) passes the threshold and CLIP's probability of its label is
>= 0.3, CLIP's label is the strong views' target and the unlabeled loss is
``(L_u + L_clip) / 2`` (dlpl_jax/multiview.py ``clip_fallback_loss``).

Inputs: ``imagenet.clip_labeled`` / ``imagenet.clip_unlabeled``: the official CSV pair
(``CLIPPseudoLabel0.95.csv``, ``CLIPPseudoLabel0.95-Unselected.csv``; ``Index`` counts
in torchvision ImageFolder order, mapped to TFDS file names, cached in
``imagenet.index_cache``; the first run reads every training record once), or one
``.npz`` of CLIP logits (``clip_unlabeled`` empty; split at ``clip_split_threshold``).

Command:
  make train CONFIG=experiments/imagenet_clip_zeroshot.py ARGS="\\
      --config.imagenet.clip_labeled=CLIPPseudoLabel0.95.csv \\
      --config.imagenet.clip_unlabeled=CLIPPseudoLabel0.95-Unselected.csv \\
      --config.imagenet.index_cache=imagenet_train_files.npz \\
      --config.init_checkpoint=res50_moco_eman_800ep.msgpack"
  make train CONFIG=experiments/imagenet_clip_zeroshot.py:smoke ARGS="--config.data_dir=DIR \\
      --config.imagenet.clip_labeled=L.csv --config.imagenet.clip_unlabeled=U.csv"

Published top-1 (DebiasPL paper, Wang et al. CVPR 2022, its zero-shot
table, ResNet-50 student, CLIP RN50 pseudo-labels): CLIP zero-shot 59.6 -> DebiasPL
68.3.
Runtime (an estimate, not measured): at most that of the 1% config (about 17 h on one
H100 at an assumed ~3,000 trained images/s); an epoch in this config is
``imagenet.unlabeled_images`` (1,281,167, the whole split: set it to the unlabeled
CSV's length for the exact official epoch).
"""

from experiments import _imagenet


def get_config(variant: str = ""):
  c = _imagenet.recipe("clip", variant)
  c.marginal_momentum = 0.99
  c.imagenet.clip_fallback = 0.3
  return c
