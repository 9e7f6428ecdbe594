"""The base configuration that every ``experiments/*.py`` file extends.

Defaults are FixMatch-RA's CIFAR-10 recipe (Sohn et al. 2020, arXiv:2001.07685) with
DebiasPL on top (Wang et al. 2022, arXiv:2201.01490). The returned ConfigDict is locked:
an experiment (or a ``--config.key=value`` override) that names a key that does not
exist fails at once, listing the valid ones.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

METHODS = ("fixmatch", "debiaspl")
UNLABELED_PROFILES = ("long_tailed", "reversed", "balanced")


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # --- data -----------------------------------------------------------------------
  c.dataset = "cifar10"          # a TFDS name: cifar10 or cifar100
  c.num_classes = 10
  c.data_dir = ""                # TFDS data dir; "" = $TFDS_DATA_DIR / TFDS default
  c.labels_per_class = 4         # balanced N-shot labeled subset (ignored when lt.enabled)
  c.labeled_seed = 0             # which labeled subset: same seed, same images anywhere
  c.in_memory = True             # load splits once, sample each batch on the device
  c.lt = ml_collections.ConfigDict()
  c.lt.enabled = False           # CIFAR-10-LT protocol (METHOD.md)
  c.lt.n1 = 1500                 # labeled images of the head class
  c.lt.m1 = 3000                 # unlabeled images of the head class
  c.lt.gamma = 100.0             # imbalance ratio
  c.lt.unlabeled_profile = "long_tailed"  # long_tailed | reversed | balanced (mismatch)
  # --- method ---------------------------------------------------------------------
  c.method = "debiaspl"          # fixmatch | debiaspl
  c.tau = 0.4                    # DebiasPL strength (debias and margin); unused by fixmatch
  c.marginal_momentum = 0.999    # EMA momentum of the class marginal
  c.threshold = 0.95
  c.lambda_u = 1.0
  # --- model and optimisation (FixMatch-RA) -----------------------------------------
  c.model = "wrn28_2"            # wrn28_2 | wrn28_8 | cnn_small
  c.dtype = "float32"            # float32 | bfloat16 (activations; params stay float32)
  c.batch_size = 64              # labeled images per step (global, over all devices)
  c.mu = 7                       # unlabeled / labeled ratio
  c.lr = 0.03
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-4          # on conv/dense kernels, added to the gradient (PyTorch SGD)
  c.cosine_factor = 7.0 / 16.0   # lr * cos(pi * factor * step / total_steps)
  c.ema_decay = 0.999            # EMA of the weights, used for evaluation
  c.total_steps = 2**20
  c.seed = 0                     # model init and the per-step randomness
  # --- evaluation, logging, checkpoints -----------------------------------------------
  c.eval_every = 1024            # FixMatch evaluates every 2^16 images = 1024 steps
  c.eval_batch_size = 1000
  c.eval_examples = 0            # 0 = the whole test split; N = its first N images
  c.log_every = 128
  c.checkpoint_every = 4096
  c.keep_checkpoints = 3
  c.progress = True              # progress bar with steps/s and ETA
  c.lock()
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Refuses values that would train something other than what the user meant."""
  def need(ok, msg):
    if not ok:
      raise ValueError(f"bad config: {msg}")
  need(c.method in METHODS, f"method must be one of {METHODS}, got {c.method!r}")
  need(c.tau >= 0, f"tau must be >= 0, got {c.tau}")
  need(0 <= c.marginal_momentum <= 1, f"marginal_momentum must be in [0, 1], got {c.marginal_momentum}")
  need(0 <= c.threshold <= 1, f"threshold must be in [0, 1], got {c.threshold}")
  need(0 <= c.ema_decay <= 1, f"ema_decay must be in [0, 1], got {c.ema_decay}")
  need(c.dtype in ("float32", "bfloat16"), f"dtype must be float32 or bfloat16, got {c.dtype!r}")
  need(c.batch_size > 0 and c.mu > 0, f"batch_size and mu must be > 0, got {c.batch_size}, {c.mu}")
  need(c.total_steps > 0, f"total_steps must be > 0, got {c.total_steps}")
  for k in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size"):
    need(c[k] > 0, f"{k} must be > 0, got {c[k]}")
  need(c.lt.unlabeled_profile in UNLABELED_PROFILES,
       f"lt.unlabeled_profile must be one of {UNLABELED_PROFILES}, got {c.lt.unlabeled_profile!r}")
  need(c.lt.gamma >= 1, f"lt.gamma must be >= 1, got {c.lt.gamma}")
  need(c.labels_per_class > 0 or c.lt.enabled, "labels_per_class must be > 0")


def effective_tau(c: ml_collections.ConfigDict) -> float:
  """The tau the step uses: 0 for FixMatch (exactly FixMatch), c.tau for DebiasPL."""
  return 0.0 if c.method == "fixmatch" else float(c.tau)


def valid_keys(config, prefix: str = "") -> list[str]:
  """All leaf keys of a ConfigDict, dotted (``lt.gamma``)."""
  out = []
  for k, v in config.items():
    out.extend(valid_keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [prefix + k])
  return out


def load_config_file(spec: str):
  """Loads an experiment config ``path[:variant]`` the way config_flags does (for scripts
  and the key check below): the file's ``get_config(variant)``, locked."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_dlpl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def check_overrides(argv) -> None:
  """Fails at start on an unknown --config.KEY override, listing the valid keys."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if spec is None or not keys or not os.path.exists(spec.partition(":")[0]):
    return
  valid = set(valid_keys(load_config_file(spec)))
  unknown = [k for k in keys if k not in valid]
  if unknown:
    raise SystemExit(f"error: unknown config key(s) {unknown}. Valid keys:\n  "
                     + "\n  ".join(sorted(valid)))
