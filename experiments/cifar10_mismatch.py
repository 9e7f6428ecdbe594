"""CIFAR-10 distribution mismatch: long-tailed labeled set, BALANCED unlabeled set.

Labeled class k has N1 * gamma^(-k/9) images; every unlabeled class has M1 images
(disjoint). The labeled marginal misleads a method that assumes matching
distributions; DebiasPL estimates the unlabeled marginal from its own predictions.

Variant: "N1_M1_GAMMA[,fixmatch]", default "1500_3000_100":
  make train CONFIG=experiments/cifar10_mismatch.py
  make train CONFIG=experiments/cifar10_mismatch.py:1500_3000_100,fixmatch

Recipe as experiments/cifar10_lt.py (mu 2, 2^18 steps). No published figure for this
exact setting is quoted in docs/METHOD.md. Runtime: as cifar10_lt.py.
"""

from experiments import cifar10_lt


def get_config(variant: str = "1500_3000_100"):
  spec, _, rest = variant.partition(",")
  return cifar10_lt.lt_config(spec, rest, unlabeled_profile="balanced")
