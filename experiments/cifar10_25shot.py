"""CIFAR-10, 25 labels per class (250 labels), WRN-28-2.

Command:
  make train CONFIG=experiments/cifar10_25shot.py            # DebiasPL
  make train CONFIG=experiments/cifar10_25shot.py:fixmatch   # FixMatch

Published: FixMatch-RA 94.93 ± 0.65 (Sohn et al. 2020, Table 2); DebiasPL 95.4
(docs/METHOD.md). Same recipe and runtime as experiments/cifar10_4shot.py (2^20 steps).
"""

from experiments import _common


def get_config(variant: str = ""):
  return _common.nshot("cifar10", 25, variant)
