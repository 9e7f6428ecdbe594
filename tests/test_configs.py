"""Every experiment config loads, validates, and sets what its docstring promises."""

import glob
import importlib
import os

import pytest

from dlpl_jax import configs
from dlpl_jax.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [
    ("cifar10_4shot", "", dict(labels_per_class=4, model="wrn28_2", method="debiaspl")),
    ("cifar10_4shot", "fixmatch", dict(method="fixmatch")),
    ("cifar10_4shot", "smoke", dict(model="cnn_small", total_steps=120, ema_decay=0.99)),
    ("cifar10_25shot", "", dict(labels_per_class=25)),
    ("cifar10_400shot", "fixmatch", dict(labels_per_class=400, method="fixmatch")),
    ("cifar100", "4", dict(num_classes=100, model="wrn28_8", labels_per_class=4)),
    ("cifar100", "100,fixmatch", dict(labels_per_class=100, method="fixmatch")),
    ("cifar10_lt", "1500_3000_100", dict(mu=2, total_steps=2**18)),
    ("cifar10_lt", "500_4000_150_reversed", dict()),
    ("cifar10_mismatch", "1500_3000_100,fixmatch", dict(method="fixmatch")),
]


@pytest.mark.parametrize("name,variant,expected", CASES)
def test_config(name, variant, expected):
  mod = importlib.import_module(f"experiments.{name}")
  c = mod.get_config(variant) if variant else mod.get_config()
  configs.validate(c)
  for k, v in expected.items():
    assert c[k] == v, (k, c[k], v)
  assert c.is_locked


def test_lt_variants():
  from experiments import cifar10_lt, cifar10_mismatch  # pylint: disable=g-import-not-at-top
  c = cifar10_lt.get_config("500_4000_150_reversed")
  assert (c.lt.n1, c.lt.m1, c.lt.gamma, c.lt.unlabeled_profile) == (500, 4000, 150.0, "reversed")
  assert cifar10_mismatch.get_config().lt.unlabeled_profile == "balanced"
  with pytest.raises(ValueError, match="1500_3000_100"):
    cifar10_lt.get_config("1500_3000")
  with pytest.raises(ValueError, match="unknown variant"):
    cifar10_lt.get_config("1500_3000_100,fixmath")


def test_every_experiment_has_a_documented_get_config():
  for path in glob.glob(os.path.join(REPO, "experiments", "*.py")):
    name = os.path.basename(path)[:-3]
    if name.startswith("_") or not name.startswith(("cifar", "study")):
      continue
    mod = importlib.import_module(f"experiments.{name}")
    assert "make train CONFIG=" in (mod.__doc__ or "") or "make study" in (mod.__doc__ or ""), name
    assert callable(mod.get_config), name


@pytest.mark.parametrize("source, message", [
    ("def get_config(:\n", r"cannot be loaded: SyntaxError: .* \(line 1\)"),
    ("import no_such_module\n", r"cannot be loaded: ModuleNotFoundError: .* \(line 1\)"),
    ("def get_config():\n  return {'lr': 0.1}\n",
     r"get_config\(\) must return an ml_collections ConfigDict .* got dict"),
    ("from dlpl_jax import configs\n\ndef get_config():\n  c = configs.get_base_config()\n"
     "  c.batch_size = '16'\n  return c\n",
     r"get_config\(\) failed: TypeError: .*batch_size.* \(line 5\)"),
    ("x = 1\n", r"defines no get_config\(\)"),
])
def test_a_broken_config_file_is_one_usage_error(tmp_path, source, message):
  """A user's config file with an error is named in one line (status 2 on the command
  line), with the exception and the line, not a traceback."""
  path = tmp_path / "mine.py"
  path.write_text(source)
  with pytest.raises(configs.UsageError, match=message) as e:
    configs.load_config_file(str(path))
  assert "\n" not in str(e.value)


def test_lt_needs_unlabeled_images_in_the_head_class():
  c = configs.get_base_config()
  c.lt.enabled = True
  c.lt.m1 = 0  # no unlabeled image at all: the step's gather would fail
  with pytest.raises(configs.UsageError, match="lt.n1 and lt.m1 must be > 0"):
    configs.validate(c)


@pytest.mark.parametrize("name,momentum,cld", [("imagenet_1pct", 0.999, 0.3),
                                               ("imagenet_0p2pct", 0.99, 0.1),
                                               ("imagenet_clip_zeroshot", 0.99, 0.3)])
def test_imagenet_official_numbers(imagenet_config, name, momentum, cld):
  c = imagenet_config(name, "")
  assert (c.batch_size, c.mu, c.lr, c.momentum, c.nesterov, c.weight_decay) == (
      64, 5, 0.003, 0.9, False, 1e-4)
  assert (c.threshold, c.tau, c.lambda_u, c.teacher_momentum, c.num_views) == (
      0.8, 0.4, 10.0, 0.999, 2)
  assert (c.marginal_momentum, c.cld_weight) == (momentum, cld)
  assert c.weight_decay_all and c.teacher and c.eval_params == "student"
  per_epoch = 1_281_167 // 320
  assert (c.total_steps, c.warmup_steps, c.lr_update_every) == (
      50 * per_epoch, 5 * per_epoch, per_epoch)
  assert c.imagenet.crop_scale_min == 0.08 and c.imagenet.crop_size == 224


def test_cifar_config_keeps_its_keys():
  c = configs.get_base_config()
  assert configs.input_kind(c) == "tfds" and configs.eval_params(c) == "ema"
  assert "imagenet" not in c


@pytest.mark.parametrize("key,value,match", [
    ("imagenet.split", "5pct", "imagenet.split must be"),
    ("eval_params", "teacher", "eval_params must be one of"),
    ("in_memory", True, "set in_memory = False"),
    ("imagenet.clip_fallback", 0.3, "applies to split 'clip' only"),
])
def test_imagenet_bad_values_refused(imagenet_config, key, value, match):
  with pytest.raises(UsageError, match=match):
    configs.validate(imagenet_config(**{key: value}))
