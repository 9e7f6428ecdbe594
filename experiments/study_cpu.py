"""The CPU-sized study: FixMatch vs DebiasPL on CIFAR-10 with 4 labels per class.

What it shows: at a scale that fits a 2-vCPU machine (a small CNN, a few thousand
steps), whether FixMatch's pseudo-labels on balanced CIFAR-10 are imbalanced, and what
DebiasPL does to that imbalance and to accuracy. It is NOT the paper's setting
(WRN-28-2, 2^20 steps, experiments/cifar10_4shot.py); absolute accuracies are far lower.

Run all four runs (2 methods x 2 seeds), the table and the plots:
  make study                       # -> runs/study/*, experiments/results/study_cpu.md
One run:
  make train CONFIG=experiments/study_cpu.py:fixmatch ARGS="--config.seed=1 --config.labeled_seed=1"

Differences from the full recipe, and why: model cnn_small (WRN-28-2 takes seconds
per step on a CPU); batch 16, mu 4; marginal momentum 0.99 (the official code's value for
short / low-label runs: with 0.999 the marginal would barely move in a run this short);
evaluation on the full test split every 250 steps. Everything else (threshold 0.95,
tau 0.4, SGD Nesterov, lr 0.03 cosine over the run, wd 5e-4, EMA 0.999) as FixMatch-RA.
Runtime: the measured wall time per run on 2 vCPUs is in experiments/results/study_cpu.md.
"""

from experiments import _common
from dlpl_jax import configs

STEPS = 3000


def get_config(variant: str = "debiaspl"):
  c = configs.get_base_config()
  c.labels_per_class = 4
  _common.cpu_study(c, STEPS, mu=4)
  _common.apply_variant(c, variant)
  return c
