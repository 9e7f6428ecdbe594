"""CIFAR-100 with 4, 25 or 100 labels per class (400 / 2500 / 10000 labels), WRN-28-8.

Command (variant = labels per class, optionally ',fixmatch'):
  make train CONFIG=experiments/cifar100.py:4            # DebiasPL, 400 labels
  make train CONFIG=experiments/cifar100.py:25,fixmatch  # FixMatch, 2500 labels
  make train CONFIG=experiments/cifar100.py:100

FixMatch's CIFAR-100 recipe: WRN-28-8, weight decay 1e-3, otherwise as CIFAR-10.
Published (FixMatch-RA, Sohn et al. 2020, Table 2, error rates turned into accuracy):
about 51.2 (400 labels), 71.7 (2500), 77.4 (10000). No DebiasPL CIFAR-100 figure is
quoted in docs/METHOD.md. Data: CIFAR-100 must be prepared for TFDS first (with
internet, `tfds build cifar100`; docs/DATA.md), else the run stops at once naming
TFDS_DATA_DIR. Runtime: WRN-28-8 is ~16x the FLOPs of WRN-28-2; not measured.
"""

from experiments import _common


def get_config(variant: str = "4"):
  shots, _, rest = variant.partition(",")
  if shots not in ("4", "25", "100"):
    raise ValueError(f"variant must start with 4, 25 or 100 (labels per class), got {variant!r}")
  return _common.nshot("cifar100", int(shots), rest)
