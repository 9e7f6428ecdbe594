"""Shared pieces of the experiment configs (not a config itself)."""

from dlpl_jax import configs


def nshot(dataset: str, labels_per_class: int, variant: str):
  """A balanced N-shot config: FixMatch-RA recipe, DebiasPL on; ``variant`` 'smoke' or ''.

  'fixmatch' / 'debiaspl' as a variant pick the method (also: --config.method=...).
  """
  c = configs.get_base_config()
  c.dataset = dataset
  c.num_classes = 100 if dataset == "cifar100" else 10
  c.labels_per_class = labels_per_class
  if dataset == "cifar100":
    c.model = "wrn28_8"
    c.weight_decay = 1e-3  # FixMatch's CIFAR-100 setting
  apply_variant(c, variant)
  return c


def apply_variant(c, variant: str, smoke_fn=None):
  """Applies comma-separated variant words: fixmatch | debiaspl | smoke (``smoke_fn``,
  default :func:`smoke`)."""
  for word in filter(None, variant.split(",")):
    if word in configs.METHODS:
      c.method = word
    elif word == "smoke":
      (smoke_fn or smoke)(c)
    else:
      raise ValueError(f"unknown variant {word!r}; valid: fixmatch, debiaspl, smoke")
  return c


def cpu_study(c, steps: int, mu: int):
  """The CPU studies' common scale (experiments/study_cpu.py, study_imbalanced.py): the
  small CNN, batch 16, marginal momentum 0.99, ``steps`` steps, the full test split
  evaluated every 250 steps, one checkpoint kept."""
  c.model = "cnn_small"
  c.batch_size = 16
  c.mu = mu
  c.marginal_momentum = 0.99
  c.total_steps = steps
  c.eval_every = 250
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 1
  c.eval_batch_size = 1000
  return c


def smoke(c):
  """A small CNN for 120 steps: exercises data, step, eval, metrics and checkpoints in
  under a minute on a CPU, and shows the method at work. Its threshold (0.5, not 0.95)
  lets a barely trained model produce confident pseudo-labels (mask rate about 0.5-0.7)
  and its marginal momentum (0.9, not 0.999) lets the marginal move within 120 steps, so
  FixMatch's pseudo-labels visibly skew (marginal about 0.04-0.19) and DebiasPL's less
  (about 0.07-0.15). The EMA decay (0.99, not 0.999) lets the evaluated EMA model move
  away from its initial weights within 120 steps; the evaluation batch (256) divides
  over 1, 2, 4 or 8 devices. Accuracy is meaningless at this size."""
  c.model = "cnn_small"
  c.batch_size = 16
  c.mu = 2
  c.threshold = 0.5
  c.marginal_momentum = 0.9
  c.total_steps = 120
  c.eval_every = 60
  c.log_every = 20
  c.checkpoint_every = 60
  c.ema_decay = 0.99
  c.eval_examples = 500
  c.eval_batch_size = 256
