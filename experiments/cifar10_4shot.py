"""CIFAR-10, 4 labels per class (40 labels), WRN-28-2: the paper's headline setting.

Reproduces: FixMatch-RA vs DebiasPL on CIFAR-10 with 40 labels, the recipe of docs/METHOD.md
(WRN-28-2, SGD Nesterov 0.9, lr 0.03 cosine 7/16, wd 5e-4, batch 64, mu 7, threshold
0.95, 2^20 steps, EMA 0.999, median of the last 20 evaluations).

Command:
  make train CONFIG=experiments/cifar10_4shot.py                     # DebiasPL
  make train CONFIG=experiments/cifar10_4shot.py:fixmatch            # FixMatch
  make train CONFIG=experiments/cifar10_4shot.py:smoke               # CPU smoke test

Published: FixMatch-RA 86.19 ± 3.37 (Sohn et al. 2020, arXiv:2001.07685, Table 2);
DebiasPL about 94.6 (third-party reproductions, docs/METHOD.md). A JPEG-compressed copy
of CIFAR-10 such as the one described in docs/DATA.md costs 2-3 points.
Runtime: 2^20 steps of 960 images: hours on one GPU, in bfloat16
(--config.dtype=bfloat16) about half the float32 time (docs/performance.md gives the
measured rates); impractical on a CPU (seconds per step): use :smoke, or
experiments/study_cpu.py for a small comparison.
"""

from experiments import _common


def get_config(variant: str = ""):
  return _common.nshot("cifar10", 4, variant)
