"""The base configuration that every ``experiments/*.py`` file extends.

Defaults are FixMatch-RA's CIFAR-10 recipe (Sohn et al. 2020, arXiv:2001.07685) with
DebiasPL on top (Wang et al. 2022, arXiv:2201.01490). The returned ConfigDict is locked:
an experiment (or a ``--config.key=value`` override) that names a key that does not
exist fails at once, listing the valid ones.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os

from dlpl_jax.data.datasets import KNOWN as KNOWN_DATASETS
from dlpl_jax.data.splits import UNLABELED_PROFILES
from dlpl_jax.errors import UsageError

METHODS = ("fixmatch", "debiaspl")
# Keys that do not change what is trained (where results are written, how often, which
# test images are scored): a resumed run may change them freely.
NON_TRAINING_KEYS = ("data_dir", "eval_every", "eval_batch_size", "eval_examples",
                     "eval_params", "imagenet.index_cache",
                     "log_every", "checkpoint_every", "keep_checkpoints", "progress")
LR_SCHEDULES = ("fixmatch", "warmup_cosine")
# The ImageNet recipe's training options and their defaults, all OFF: with these values
# the step is the CIFAR step exactly. A stored run whose config.json predates a key is
# compared as if it held this default (it was trained with the option off).
RECIPE_DEFAULTS = {
    "teacher": False,            # an EMA teacher gives the weak-view logits
    "teacher_momentum": 0.999,   # its EMA momentum (params and BN statistics)
    "num_views": 1,              # K weak and K strong views per unlabeled image
    "cld_weight": 0.0,           # weight of the CLD loss; 0 = off
    "cld_temperature": 0.07,     # its temperature
    "lr_schedule": "fixmatch",   # fixmatch | warmup_cosine
    "warmup_steps": 0,           # warmup_cosine: linear warm-up steps
    "lr_update_every": 1,        # warmup_cosine: the cosine changes every N steps
    "weight_decay_all": False,   # decay every parameter, not only conv/dense kernels
    "init_checkpoint": "",       # initial weights from this file; "" = random init
}


def get_base_config() -> "ml_collections.ConfigDict":
  import ml_collections  # pylint: disable=g-import-not-at-top  (the [train] extra)
  c = ml_collections.ConfigDict()
  # --- data -----------------------------------------------------------------------
  c.dataset = "cifar10"          # a TFDS name: cifar10 or cifar100
  c.num_classes = 10
  c.data_dir = ""                # TFDS data dir; "" = $TFDS_DATA_DIR / TFDS default
  c.labels_per_class = 4         # balanced N-shot labeled subset (ignored when lt.enabled)
  c.labeled_seed = 0             # which labeled subset: same seed, same images anywhere
  c.in_memory = True             # load splits once, sample each batch on the device
  c.lt = ml_collections.ConfigDict()
  c.lt.enabled = False           # CIFAR-10-LT protocol (docs/METHOD.md)
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
  c.model = "wrn28_2"            # wrn28_2 | wrn28_8 | cnn_small | resnet50
  c.dtype = "float32"            # float32 | bfloat16 (activations; params stay float32)
  c.batch_size = 64              # labeled images per step (global, over all devices)
  c.mu = 7                       # unlabeled / labeled ratio
  c.lr = 0.03
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-4          # on conv/dense kernels, added to the gradient (PyTorch SGD)
  c.cosine_factor = 7.0 / 16.0   # lr * cos(pi * factor * step / total_steps) (lr_schedule
                                 # fixmatch)
  c.ema_decay = 0.999            # EMA of the weights, used for evaluation
  c.total_steps = 2**20
  c.seed = 0                     # model init and the per-step randomness
  # --- the ImageNet recipe's options (docs/METHOD.md); the defaults are all off -------
  c.teacher = False              # True: an EMA teacher (params AND BN statistics) run in
                                 # eval mode gives the weak-view logits; False: the student
                                 # in train mode (FixMatch)
  c.teacher_momentum = 0.999     # the teacher's EMA momentum
  c.num_views = 1                # K weak and K strong views per unlabeled image (official: 2)
  c.cld_weight = 0.0             # CLD loss weight, 0 = off (official: 0.3; 0.1 at 0.2%)
  c.cld_temperature = 0.07       # CLD temperature
  c.lr_schedule = "fixmatch"     # fixmatch: the cosine above | warmup_cosine: linear warm-up,
                                 # then lr * (1 + cos(pi * progress)) / 2
  c.warmup_steps = 0             # warmup_cosine only: steps of linear warm-up
  c.lr_update_every = 1          # warmup_cosine only: the cosine changes every N steps
                                 # (official: once per epoch = the steps of one epoch)
  c.weight_decay_all = False     # True: decay every parameter (BN scales, biases), as
                                 # torch.optim.SGD(model.parameters(), weight_decay=...)
  c.init_checkpoint = ""         # initial {params, batch_stats}: a .msgpack written by
                                 # dlpl-convert, or an .npz; "" = random init
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


def get_imagenet_config() -> "ml_collections.ConfigDict":
  """The base config of the ImageNet recipes (``experiments/imagenet_*.py``).

  The official ImageNet hyper-parameters (scripts of the official code, checked against
  ``main_DebiasPL.py``): ResNet-50 from MoCo-EMAN weights (``init_checkpoint``),
  labeled batch 64, mu 5, SGD momentum 0.9 without Nesterov, weight decay 1e-4 on every
  parameter, lr 0.003, 5 warm-up epochs then a half cosine, per epoch; threshold 0.8,
  tau 0.4, lambda_u 10, an EMA teacher of momentum 0.999, 2 weak + 2 strong views, the
  student evaluated. Epoch-based numbers (``total_steps``, ``warmup_steps``,
  ``lr_update_every``) are set by :func:`imagenet_schedule` from the epoch count.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = get_base_config()
  c.unlock()
  c.dataset = "imagenet2012"
  c.num_classes = 1000
  c.in_memory = False
  c.input = "imagenet"           # the ImageNet input (dlpl_jax/data/imagenet.py)
  c.eval_params = "student"      # the official code evaluates the student
  c.model = "resnet50"
  c.dtype = "bfloat16"
  c.batch_size = 64
  c.mu = 5
  c.lr = 0.003
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.weight_decay_all = True
  c.threshold = 0.8
  c.tau = 0.4
  c.lambda_u = 10.0
  c.marginal_momentum = 0.999
  c.teacher = True
  c.teacher_momentum = 0.999
  c.num_views = 2
  c.cld_weight = 0.3
  c.lr_schedule = "warmup_cosine"
  c.eval_batch_size = 256
  c.log_every = 100
  c.imagenet = ml_collections.ConfigDict()
  c.imagenet.split = "1pct"            # 1pct | 0p2pct | clip (dlpl_jax/data/imagenet.py)
  c.imagenet.train_name = "imagenet2012"
  c.imagenet.subset_name = "imagenet2012_subset/1pct"
  c.imagenet.subset_fraction = 0.2     # 0p2pct: per class round(0.2 n_c) of the 1% subset
  c.imagenet.crop_size = 224
  c.imagenet.eval_resize = 256
  c.imagenet.crop_scale_min = 0.08     # torchvision RandomResizedCrop's default (official)
  c.imagenet.shuffle_buffer = 10_000
  c.imagenet.unlabeled_images = 1_281_167  # one epoch = this many unlabeled images
  c.imagenet.epochs = 50
  c.imagenet.warmup_epochs = 5
  c.imagenet.clip_labeled = ""         # clip: pseudo-labeled CSV, or an .npz of logits
  c.imagenet.clip_unlabeled = ""       # clip: the unlabeled CSV ("" with an .npz)
  c.imagenet.clip_split_threshold = 0.95  # clip, .npz: CLIP probability for the labeled set
  c.imagenet.clip_fallback = 0.0       # clip: CLIP's label where the model's masks are 0
                                       # and CLIP's probability >= this; 0 = off
  c.imagenet.index_cache = ""          # clip: .npz cache of the train split's file names
  imagenet_schedule(c)
  c.lock()
  return c


def imagenet_schedule(c) -> None:
  """Sets ``total_steps``, ``warmup_steps`` and ``lr_update_every`` from the epochs:
  one epoch = ``imagenet.unlabeled_images / (batch_size * mu)`` steps (the official loop
  runs over the unlabeled loader), the cosine updated once per epoch."""
  per_epoch = max(1, c.imagenet.unlabeled_images // (c.batch_size * c.mu))
  c.total_steps = per_epoch * c.imagenet.epochs
  c.warmup_steps = per_epoch * c.imagenet.warmup_epochs
  c.lr_update_every = per_epoch
  c.eval_every = per_epoch
  c.checkpoint_every = max(1, per_epoch // 4)


INPUTS = ("tfds", "imagenet")
EVAL_PARAMS = ("ema", "student")


def input_kind(config) -> str:
  """``config.input``: ``tfds`` (CIFAR, the default when absent) or ``imagenet``."""
  return getattr(config, "input", "tfds")


def eval_params(config) -> str:
  """``config.eval_params``: ``ema`` (the default when absent) or ``student``."""
  return getattr(config, "eval_params", "ema")


def validate(c: ml_collections.ConfigDict, check_files: bool = True) -> None:
  """Refuses values that would train something other than what the user meant.

  Checks signs, ranges and finiteness of every number, and the combinations that cannot
  work (a labeled set larger than the dataset's classes hold, a class count that is not
  the dataset's, streaming with a long-tailed protocol), before any data is read.

  ``check_files``: also require ``init_checkpoint`` to exist (the trainer skips this on
  a resume, which never reads the file).

  Raises:
    UsageError: naming the key, the value and what is allowed.
  """
  def need(ok, msg):
    if not ok:
      raise UsageError(f"bad config: {msg}")

  def finite(k, lo=None, hi=None, lo_open=False, hi_open=False):
    v = c[k] if "." not in k else c[k.split(".")[0]][k.split(".")[1]]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and lo is not None:
      ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
      ok = v < hi if hi_open else v <= hi
    lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo}, "
    hi_s = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
    rng = (f" in {lo_s}{hi_s}" if lo is not None and hi is not None else
           f" {'>' if lo_open else '>='} {lo}" if lo is not None else "")
    need(ok, f"{k} must be a finite number{rng}, got {v!r}")

  need(c.method in METHODS, f"method must be one of {METHODS}, got {c.method!r}")
  finite("tau", 0)
  finite("marginal_momentum", 0, 1)
  finite("threshold", 0, 1)
  finite("lambda_u", 0)
  finite("lr", 0, lo_open=True)
  finite("momentum", 0, 1, hi_open=True)
  finite("weight_decay", 0)
  finite("cosine_factor", 0, 0.5)  # above 1/2 the cosine turns the lr negative
  finite("ema_decay", 0, 1)
  need(c.dtype in ("float32", "bfloat16"), f"dtype must be float32 or bfloat16, got {c.dtype!r}")
  need(c.model in ("wrn28_2", "wrn28_8", "cnn_small", "resnet50"),
       f"model must be wrn28_2, wrn28_8, cnn_small or resnet50, got {c.model!r}")
  need(c.batch_size > 0 and c.mu > 0, f"batch_size and mu must be > 0, got {c.batch_size}, {c.mu}")
  need(c.total_steps > 0, f"total_steps must be > 0, got {c.total_steps}")
  for k in ("seed", "labeled_seed"):  # PRNGKey and NumPy take 32-bit seeds
    need(0 <= c[k] < 2**32, f"{k} must be in [0, 2**32), got {c[k]}")
  need(c.num_classes >= 2, f"num_classes must be >= 2, got {c.num_classes}")
  for k in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size"):
    need(c[k] > 0, f"{k} must be > 0, got {c[k]}")
  need(c.eval_examples >= 0, f"eval_examples must be >= 0 (0 = the whole test split), "
                             f"got {c.eval_examples}")
  _validate_recipe(c, need, finite, check_files)
  need(input_kind(c) in INPUTS, f"input must be one of {INPUTS}, got {input_kind(c)!r}")
  need(eval_params(c) in EVAL_PARAMS,
       f"eval_params must be one of {EVAL_PARAMS}, got {eval_params(c)!r}")
  if input_kind(c) == "imagenet":
    _validate_imagenet(c, need)
  _validate_data(c, need, finite)

def _validate_data(c, need, finite) -> None:
  """The labeled protocol, the data source and the dataset's known sizes."""
  need(c.lt.unlabeled_profile in UNLABELED_PROFILES,
       f"lt.unlabeled_profile must be one of {UNLABELED_PROFILES}, got {c.lt.unlabeled_profile!r}")
  finite("lt.gamma", 1)
  need(c.labels_per_class > 0 or c.lt.enabled, "labels_per_class must be > 0")
  if c.lt.enabled:
    need(c.lt.n1 > 0 and c.lt.m1 > 0, f"lt.n1 and lt.m1 must be > 0, got {c.lt.n1}, "
                                       f"{c.lt.m1}")
    need(c.in_memory, "in_memory=False streams the whole training split as the unlabeled "
                      "set; the long-tailed protocols need in_memory=True")
  need(c.in_memory or input_kind(c) == "imagenet" or not str(c.data_dir).endswith(".npz"),
       f"config.data_dir = {c.data_dir} is a compact file, which is read into memory: set "
       "config.in_memory = True (streaming reads TFDS)")
  known = KNOWN_DATASETS.get(c.dataset)
  if known is not None:
    n_cls, per_class, n_test = known
    need(c.num_classes == n_cls, f"{c.dataset} has {n_cls} classes, config.num_classes = "
                                 f"{c.num_classes}")
    if c.lt.enabled:
      need(c.lt.n1 + c.lt.m1 <= per_class,
           f"lt.n1 + lt.m1 = {c.lt.n1 + c.lt.m1} exceeds the {per_class} training images of "
           f"a {c.dataset} class")
    else:
      need(c.labels_per_class <= per_class,
           f"labels_per_class = {c.labels_per_class} exceeds the {per_class} training images "
           f"of a {c.dataset} class")
    need(c.eval_examples <= n_test, f"eval_examples = {c.eval_examples} exceeds the {n_test} "
                                    f"test images of {c.dataset}")


def _validate_imagenet(c, need) -> None:
  o = c.imagenet
  need(o.split in ("1pct", "0p2pct", "clip"),
       f"imagenet.split must be 1pct, 0p2pct or clip, got {o.split!r}")
  need(not c.in_memory, "input='imagenet' streams its data: set in_memory = False")
  need(not c.lt.enabled, "input='imagenet' has no long-tailed protocol: lt.enabled = False")
  need(0 < o.subset_fraction <= 1, f"imagenet.subset_fraction must be in (0, 1], got "
                                   f"{o.subset_fraction}")
  need(o.crop_size > 0 and o.eval_resize >= o.crop_size,
       f"imagenet.crop_size ({o.crop_size}) must be > 0 and <= eval_resize ({o.eval_resize})")
  need(0 < o.crop_scale_min <= 1, f"imagenet.crop_scale_min must be in (0, 1], got "
                                  f"{o.crop_scale_min}")
  need(0 <= o.clip_fallback <= 1, f"imagenet.clip_fallback must be in [0, 1], got "
                                  f"{o.clip_fallback}")
  if o.split == "clip":
    need(bool(o.clip_labeled), "imagenet.split = 'clip' needs imagenet.clip_labeled (the "
                               "CLIP pseudo-label CSV or .npz)")
    for k in ("clip_labeled", "clip_unlabeled"):
      need(not o[k] or os.path.isfile(o[k]), f"imagenet.{k} = {o[k]!r} is not a file")
  else:
    need(o.clip_fallback == 0 or o.split == "clip",
         "imagenet.clip_fallback applies to split 'clip' only: set it to 0")


def _validate_recipe(c, need, finite, check_files=True) -> None:
  """The ImageNet recipe's options (see :data:`RECIPE_DEFAULTS`)."""
  def is_bool(k):
    need(isinstance(c[k], bool), f"{k} must be True or False, got {c[k]!r}")

  def is_int(k, lo):
    v = c[k]
    need(isinstance(v, int) and not isinstance(v, bool) and v >= lo,
         f"{k} must be an integer >= {lo}, got {v!r}")

  is_bool("teacher")
  finite("teacher_momentum", 0, 1)
  is_int("num_views", 1)
  finite("cld_weight", 0)
  finite("cld_temperature", 0, lo_open=True)
  need(c.lr_schedule in LR_SCHEDULES,
       f"lr_schedule must be one of {LR_SCHEDULES}, got {c.lr_schedule!r}")
  is_int("warmup_steps", 0)
  is_int("lr_update_every", 1)
  if c.lr_schedule == "fixmatch":
    need(c.warmup_steps == 0 and c.lr_update_every == 1,
         f"warmup_steps = {c.warmup_steps} and lr_update_every = {c.lr_update_every} apply "
         "to lr_schedule='warmup_cosine' only; with 'fixmatch' leave them at 0 and 1")
  else:
    need(c.warmup_steps < c.total_steps,
         f"warmup_steps = {c.warmup_steps} must be below total_steps = {c.total_steps}")
  is_bool("weight_decay_all")
  need(isinstance(c.init_checkpoint, str),
       f"init_checkpoint must be a file path or '', got {c.init_checkpoint!r}")
  if c.init_checkpoint and check_files:
    need(os.path.isfile(c.init_checkpoint),
         f"init_checkpoint = {c.init_checkpoint!r} is not a file")


def training_diff(stored: dict, current: dict) -> list[tuple[str, object, object]]:
  """Keys whose value changes what is trained, as ``(key, stored, current)``.

  Args:
    stored, current: config dicts (``ConfigDict.to_dict()`` or a parsed config.json);
      nested dicts are compared by dotted key. :data:`NON_TRAINING_KEYS` are ignored. A
      key of :data:`RECIPE_DEFAULTS` that ``stored`` lacks (a run from before the key
      existed) counts as its default value.

  Examples:
    >>> training_diff({"lr": 0.03, "log_every": 1}, {"lr": 0.1, "log_every": 5})
    [('lr', 0.03, 0.1)]
  """
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out
  a, b = flat(stored), flat(current)
  a.update({k: v for k, v in RECIPE_DEFAULTS.items() if k in b and k not in a})
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in NON_TRAINING_KEYS and a.get(k) != b.get(k)]


def to_dict(c: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON-able data (what ``config.json`` holds)."""
  return json.loads(c.to_json_best_effort())


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
  and the command-line check below): the file's ``get_config(variant)``, locked.

  Raises:
    UsageError: the file does not exist, has no ``get_config``, or refuses the variant.
  """
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"config file {path!r} does not exist (from --config={spec}); the "
                     f"configs are experiments/*.py")
  module_spec = importlib.util.spec_from_file_location("_dlpl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's file)
    raise UsageError(f"config file {path!r} cannot be loaded: {_where(e, path)}") from e
  if not hasattr(module, "get_config"):
    raise UsageError(f"config file {path!r} defines no get_config()")
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except (ValueError, KeyError) as e:
    raise UsageError(f"config {spec!r}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"config {spec!r}: get_config() failed: {_where(e, path)}") from e
  import ml_collections  # pylint: disable=g-import-not-at-top
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"config {spec!r}: get_config() must return an ml_collections "
                     f"ConfigDict (extend configs.get_base_config()), got "
                     f"{type(config).__name__}")
  return config


def _where(e: Exception, path: str) -> str:
  """``Type: message (line N)`` of an exception raised by the config file ``path``."""
  line = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else None
  tb = e.__traceback__
  while tb is not None:  # the innermost frame in the config file itself
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
      line = tb.tb_lineno
    tb = tb.tb_next
  msg = (e.msg if isinstance(e, SyntaxError) else str(e)).splitlines()
  return (f"{type(e).__name__}: {msg[0] if msg else ''}"
          + (f" (line {line})" if line else ""))


def check_overrides(argv) -> None:
  """Checks ``--config=FILE[:VARIANT]`` and every ``--config.KEY`` before flags are parsed.

  Raises:
    UsageError: one line naming a missing config file, a refused variant, or an unknown
      key with the nearest valid ones ("did you mean").
  """
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if spec is None:
    return
  valid = valid_keys(load_config_file(spec))
  for key in keys:
    if key not in valid:
      near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
      hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else "."
      raise UsageError(f"unknown config key {key!r}{hint} Valid keys: "
                       + ", ".join(sorted(valid)))
