"""CIFAR-10-LT: long-tailed labeled and unlabeled sets (DARP / USB protocol), WRN-28-2.

Per-class counts n_k = N1 * gamma^(-k/9) (labeled) and m_k = M1 * gamma^(-k/9)
(unlabeled, disjoint from the labeled images); the 'reversed' profile gives unlabeled
class k the count of class 9-k.

Variant: "N1_M1_GAMMA[_reversed][,fixmatch]", default "1500_3000_100". The settings:
  make train CONFIG=experiments/cifar10_lt.py:1500_3000_100
  make train CONFIG=experiments/cifar10_lt.py:1500_3000_150
  make train CONFIG=experiments/cifar10_lt.py:500_4000_100
  make train CONFIG=experiments/cifar10_lt.py:500_4000_150
  make train CONFIG=experiments/cifar10_lt.py:1500_3000_100_reversed
  make train CONFIG=experiments/cifar10_lt.py:1500_3000_100,fixmatch   # the baseline

Recipe: as USB's FixMatch for this protocol (docs/METHOD.md): mu = 2, 2^18 steps, the rest
FixMatch-RA. Published: FixMatch 76.69 at (1500/3000, gamma=100) (USB, WRN-28-2); no
DebiasPL figure for this protocol is quoted (docs/METHOD.md).
Runtime: 2^18 steps of 64 * (1 + 2 * 2) = 320 images; not measured on an accelerator
(the 960-image CIFAR-10 step: 86-89 steps/s in bf16 on an H100, docs/performance.md).
"""

from experiments import _common
from dlpl_jax import configs


def lt_config(spec: str, variant_rest: str, unlabeled_profile: str | None = None):
  parts = spec.split("_")
  if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "reversed"):
    raise ValueError(f"variant must look like 1500_3000_100[_reversed], got {spec!r}")
  c = configs.get_base_config()
  c.lt.enabled = True
  c.lt.n1, c.lt.m1, c.lt.gamma = int(parts[0]), int(parts[1]), float(parts[2])
  c.lt.unlabeled_profile = unlabeled_profile or (
      "reversed" if len(parts) == 4 else "long_tailed")
  c.mu = 2
  c.total_steps = 2**18
  _common.apply_variant(c, variant_rest)
  return c


def get_config(variant: str = "1500_3000_100"):
  spec, _, rest = variant.partition(",")
  return lt_config(spec, rest)
