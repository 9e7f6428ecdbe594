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


def apply_variant(c, variant: str):
  """Applies comma-separated variant words: fixmatch | debiaspl | smoke."""
  for word in filter(None, variant.split(",")):
    if word in configs.METHODS:
      c.method = word
    elif word == "smoke":
      smoke(c)
    else:
      raise ValueError(f"unknown variant {word!r}; valid: fixmatch, debiaspl, smoke")
  return c


def smoke(c):
  """A few steps of a small CNN: exercises data, step, eval, metrics and checkpoints in
  about a minute on a CPU. Accuracy is meaningless."""
  c.model = "cnn_small"
  c.batch_size = 8
  c.mu = 2
  c.total_steps = 12
  c.eval_every = 6
  c.log_every = 3
  c.checkpoint_every = 6
  c.eval_examples = 500
  c.eval_batch_size = 250
