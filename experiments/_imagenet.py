"""Shared pieces of the ImageNet configs (not a config itself)."""

from dlpl_jax import configs
from experiments import _common


def recipe(split: str, variant: str):
  """The official ImageNet recipe for ``split`` (1pct | 0p2pct | clip); variant
  ``smoke`` (a tiny CPU run on a fake ImageNet-shaped dataset), ``fixmatch`` or ``''``."""
  c = configs.get_imagenet_config()
  c.imagenet.split = split
  return _common.apply_variant(c, variant, smoke_fn=smoke)


def smoke(c):
  """Seconds on a CPU: the small CNN on 32x32 crops of the fake ImageNet-shaped TFDS
  datasets ``fake_imagenet`` / ``fake_imagenet_subset/1pct`` (10 classes; the tests
  write them, give their folder as --config.data_dir), 6 steps with every recipe option
  on (teacher, 2 views, CLD, warm-up cosine), evaluated and checkpointed."""
  c.imagenet.train_name = "fake_imagenet"
  c.imagenet.subset_name = "fake_imagenet_subset/1pct"
  c.num_classes = 10
  c.model = "cnn_small"
  c.dtype = "float32"
  c.batch_size = 4
  c.mu = 2
  c.imagenet.crop_size = 32
  c.imagenet.eval_resize = 36
  c.imagenet.shuffle_buffer = 64
  c.imagenet.unlabeled_images = 24     # 3 steps per epoch
  c.imagenet.epochs = 2
  c.imagenet.warmup_epochs = 1
  configs.imagenet_schedule(c)
  c.checkpoint_every = 3
  c.eval_every = 3
  c.log_every = 1
  c.eval_batch_size = 20
  c.threshold = 0.5
  c.progress = False
