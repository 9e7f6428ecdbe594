"""The CPU-sized study of the imbalanced settings: FixMatch vs DebiasPL on CIFAR-10-LT
(gamma = 100) and on a distribution mismatch (long-tailed labeled set, balanced
unlabeled and test sets).

What it shows: at a scale that fits a 2-vCPU machine, whether FixMatch's pseudo-labels
follow the TRUE class shares of the unlabeled data (long-tailed in "lt", balanced in
"mismatch") or drift towards the head classes of the labeled set, what DebiasPL does to
that, and to the recall of the head and tail classes on the balanced test set. It is NOT
the paper's setting (WRN-28-2, 2^18 steps: experiments/cifar10_lt.py,
experiments/cifar10_mismatch.py); absolute accuracies are far lower.

Variant: "SETTING[,METHOD]", SETTING "lt" or "mismatch", METHOD "debiaspl" (default) or
"fixmatch". All eight runs (2 settings x 2 methods x 2 seeds), the tables and the plots:
  make study-imbalanced        # -> runs/study_imbalanced/*, experiments/results/study_imbalanced.md
One run:
  make train CONFIG=experiments/study_imbalanced.py:lt,fixmatch

The data (the DARP / USB protocol with N1 = 500, M1 = 4000, gamma = 100; disjoint
labeled and unlabeled images, docs/METHOD.md):
  lt:       labeled 500, 299, 179, 107, 64, 38, 23, 13, 8, 5 per class (1236);
            unlabeled 4000 ... 40 in the same profile (9,922); test balanced (10,000).
  mismatch: the same labeled set; 4000 unlabeled images of every class (40,000).
Differences from the full settings, and why: model cnn_small (WRN-28-2 takes seconds per
step on a CPU); batch 16, mu 2 as USB's recipe; 3000 steps (the measured wall time per
run on 2 vCPUs is in experiments/results/study_imbalanced.md; a longer run is
--config.total_steps);
marginal momentum 0.99 (as the balanced CPU study: with 0.999 the marginal would barely
move in 3000 steps); evaluation on the full test split every 250 steps. N1 = 500 rather
than 1500: fewer labels, as the paper's low-label settings, and a larger unlabeled set.
Everything else (threshold 0.95, tau 0.4, SGD Nesterov, lr 0.03 cosine over the run,
wd 5e-4, EMA 0.999) as FixMatch-RA.
"""

from experiments import _common
from experiments import cifar10_lt

STEPS = 3000
SETTINGS = ("lt", "mismatch")


def get_config(variant: str = "lt"):
  setting, _, rest = variant.partition(",")
  if setting not in SETTINGS:
    raise ValueError(f"variant must start with one of {SETTINGS}, got {variant!r}")
  c = cifar10_lt.lt_config("500_4000_100", "",
                           unlabeled_profile="balanced" if setting == "mismatch" else None)
  _common.cpu_study(c, STEPS, mu=2)
  _common.apply_variant(c, rest)
  return c
