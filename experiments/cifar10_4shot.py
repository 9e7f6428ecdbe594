"""CIFAR-10, 4 labels per class (40 labels), WRN-28-2: the paper's headline setting.

Reproduces: FixMatch-RA vs DebiasPL on CIFAR-10 with 40 labels (METHOD.md's recipe:
SGD Nesterov 0.9, lr 0.03 cosine 7/16, wd 5e-4, batch 64, mu 7, threshold 0.95,
2^20 steps, EMA 0.999, median of the last 20 evaluations).

Command:
  make train CONFIG=experiments/cifar10_4shot.py                        # DebiasPL
  make train CONFIG=experiments/cifar10_4shot.py ARGS="--config.method=fixmatch"
  make train CONFIG=experiments/cifar10_4shot.py:smoke                  # CPU smoke test

Expected accuracy (literature, original CIFAR-10 pixels): FixMatch-RA 86.19 ± 3.37
(Sohn et al. 2020, Table 2); DebiasPL about 94.6 (third-party reproductions; the paper
reports 95.4 at 250 labels). The JPEG'd offline copy (../shared/DATA.md) is reported to
cost 2-3 points. Runtime: not measured on an accelerator yet (see README, Performance);
the train step is 960 images through WRN-28-2 with on-device augmentation. On this
project's 2-vCPU machine a full run is impossible (seconds per step); use :smoke or the
study configs.
"""

from dlpl_jax import configs


def get_config(variant: str = ""):
  c = configs.get_base_config()
  c.dataset = "cifar10"
  c.num_classes = 10
  c.labels_per_class = 4
  c.method = "debiaspl"
  if variant == "smoke":
    # A few steps of a small CNN on the real CIFAR-10: exercises data, step, eval,
    # metrics and checkpoints in about a minute on a CPU. Accuracy is meaningless.
    c.model = "cnn_small"
    c.batch_size = 8
    c.mu = 2
    c.total_steps = 12
    c.eval_every = 6
    c.log_every = 3
    c.checkpoint_every = 6
    c.eval_examples = 500
    c.eval_batch_size = 250
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; valid: '' (full), 'smoke'")
  return c
