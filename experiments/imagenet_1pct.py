"""ImageNet, 1% labels (12,811 images, TFDS ``imagenet2012_subset/1pct``), ResNet-50.

Reproduces: DebiasPL's semi-supervised ImageNet setting (official script
``scripts/1perc-ssl/train_DebiasPL.sh``): ResNet-50 initialised from MoCo-EMAN (800
epochs), labeled batch 64, mu 5, SGD momentum 0.9 (no Nesterov), weight decay 1e-4 on
every parameter, lr 0.003 with 5 epochs of linear warm-up then a half cosine (updated
per epoch), 50 epochs of the unlabeled set, threshold 0.8, tau 0.4, marginal momentum
0.999, lambda_u 10, an EMA teacher (0.999, params and BN statistics) for the weak views,
2 weak + 2 strong views, CLD weight 0.3; the student is evaluated (``eval_params``).
Views: random-resized crops (scale (0.08, 1), torchvision's default, as the official
``DefaultTrain``) + flip on the host; RandAugment(2, 10) + Cutout on the device.

Command (data: ``imagenet2012`` and ``imagenet2012_subset/1pct`` prepared with TFDS
from the manual download; weights: ``python -m dlpl_jax.convert`` of the MoCo-EMAN
checkpoint):
  make train CONFIG=experiments/imagenet_1pct.py \\
      ARGS="--config.init_checkpoint=res50_moco_eman_800ep.msgpack"
  make train CONFIG=experiments/imagenet_1pct.py:fixmatch ARGS=...   # FixMatch
  make train CONFIG=experiments/imagenet_1pct.py:smoke \\
      ARGS="--config.data_dir=DIR"   # CPU smoke run on a fake dataset (tests/imagenet_fake.py)

Published top-1 (DebiasPL paper, Wang et al. CVPR 2022, its ImageNet table; MoCo-EMAN init):
FixMatch 60.9 -> DebiasPL 65.3.
Runtime (an estimate, not measured): 4,003 steps per epoch, 200,150 steps;
a step trains 704 images (64 labeled + 2 x 320 strong) and runs the teacher on 640;
at ~3,000 trained ResNet-50 images/s (one H100, bfloat16, an assumed rate) that is about
17 h (25 h if the teacher's images count as trained ones, as the trainer's CPU guard
counts them), if the host decodes ~1,300 JPEGs/s (16+ cores). The official scripts use
8 GPUs.
Use ``make bench CONFIG=experiments/imagenet_1pct.py`` to measure the step on the device.
"""

from experiments import _imagenet


def get_config(variant: str = ""):
  return _imagenet.recipe("1pct", variant)
