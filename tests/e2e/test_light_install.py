"""A light install: `pip install dlpl_jax` brings only jax, flax, optax and numpy (and what
they pull in: absl-py with optax, orbax-checkpoint with flax). The math, augmentation,
models and the train step must import and run without TensorFlow, TFDS, TensorBoard,
matplotlib, Pillow, ml_collections or tqdm (each made unimportable in a fresh interpreter
by the ``hide_extras`` prelude), and every command must answer in one line naming the
extra to install, with exit status 2: never a traceback for a missing extra."""

import pathlib
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# What the hide_extras prelude hides (tests/conftest.py): modules, then distributions.
EXTRAS = ("tensorflow", "tensorflow_datasets", "tensorboard", "matplotlib", "PIL",
          "ml_collections", "tqdm")
DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "tensorboard",
                 "matplotlib", "pillow", "ml-collections", "tqdm")


@pytest.fixture
def without_extras(python, hide_extras):
  """``without_extras(code)``: runs ``code`` in a fresh interpreter of a light install;
  checks that it succeeded and returns its stdout."""
  def run(code: str) -> str:
    res = python(["-c", "import sys\n" + textwrap.dedent(code)], prelude=hide_extras)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout
  return run


def test_blocker_blocks(without_extras):
  """As if not installed: import fails, a probe answers None, no metadata; the rest of
  the environment is untouched."""
  out = without_extras(f"""
      import importlib.metadata, importlib.util
      for name in {EXTRAS!r}:
        try:
          __import__(name)
        except ModuleNotFoundError:
          pass
        else:
          raise SystemExit(name + " imported")
        assert importlib.util.find_spec(name) is None, name
      for dist in {DISTRIBUTIONS!r}:
        try:
          importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
          pass
        else:
          raise SystemExit(dist + " has metadata")
      assert importlib.util.find_spec("jax") is not None
      assert importlib.metadata.version("jax")
      print("blocked")
      """)
  assert out.strip() == "blocked"


def test_core_runs_without_the_extras(without_extras):
  """The math, the augmentation, a model, the optimizer and the jitted train step (with
  its in-memory input stage), as a program of one's own would use them."""
  out = without_extras("""
      import jax, numpy as np
      import dlpl_jax
      from dlpl_jax import augment, models
      from dlpl_jax.data import in_memory
      from dlpl_jax.training import inputs
      from dlpl_jax.training import state as state_lib
      from dlpl_jax.training.step import StepConfig
      d = in_memory.synthetic(labeled_per_class=2, unlabeled=32, test=8)
      model = models.create_model("cnn_small", 10)
      tx = state_lib.make_optimizer(state_lib.OptimizerConfig(
          lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4, total_steps=10,
          cosine_factor=7 / 16))
      state = state_lib.create_train_state(model, tx, seed=0, image_shape=d.x_l.shape[1:])
      cfg = StepConfig(num_classes=10, batch_size=4, mu=2, tau=0.4, threshold=0.5,
                       marginal_momentum=0.9, lambda_u=1.0, ema_decay=0.999, seed=0)
      data = {"x_l": d.x_l, "y_l": d.y_l, "x_u": d.x_u, "y_u": d.y_u}
      for _ in range(2):
        state, m = inputs.in_memory_step(state, data, model=model, cfg=cfg)
      assert int(state.step) == 2 and np.isfinite(float(m["train/loss"]))
      assert abs(float(state.marginal.sum()) - 1) < 1e-5
      assert augment.strong(jax.random.PRNGKey(0), d.x_u[:2]).shape == (2, 32, 32, 3)
      q = dlpl_jax.debias(jax.numpy.zeros((2, 10)), state.marginal, 0.4)
      assert q.shape == (2, 10)
      bad = [m for m in sys.modules if m.split(".")[0] in {"tensorflow", "matplotlib",
                                                           "ml_collections"}]
      assert not bad, bad
      print("ok")
      """)
  assert out.strip().endswith("ok")


def test_readme_example_runs_without_the_extras(without_extras):
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  block = readme.split("```python\n", 1)[1].split("```", 1)[0]
  without_extras(block)


# `python -m MODULE ARGS` in a light install: (module, args, the extra it names).
COMMANDS = {
    "train --help": ("dlpl_jax.main", ["--help"], "train"),
    "train": ("dlpl_jax.main", ["--config=experiments/cifar10_4shot.py:smoke"], "train"),
    "bench --help": ("dlpl_jax.bench", ["--help"], "train"),
    "analyze": ("dlpl_jax.analyze", ["RUN"], "analyze"),
    "zeroshot": ("dlpl_jax.zeroshot", ["--logits", "X", "--out", "D"], "analyze"),
    "compact_data": ("dlpl_jax.compact_data", ["--out", "x.npz"], "train"),
    "augment --show": ("dlpl_jax.augment", ["--show"], "analyze"),
}


def _run_module(python, prelude, module, args):
  """``python -m MODULE ARGS`` (in the repository root) after ``prelude``; checks that the
  command wrote none of the outputs it was given."""
  existed = {p: (REPO / p).exists() for p in ("x.npz", "D")}
  res = python(["-c", f"""
      import runpy, sys
      sys.argv = [{module!r}, *{args!r}]
      runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
      """], prelude=prelude)
  assert {p: (REPO / p).exists() for p in existed} == existed
  return res


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_names_the_missing_extra_in_one_line(python, hide_extras, name):
  module, args, extra = COMMANDS[name]
  res = _run_module(python, hide_extras, module, args)
  assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-3000:])
  assert "Traceback" not in res.stderr + res.stdout
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("[dlpl_jax] error: "), res.stderr[-3000:]
  assert f"pip install 'dlpl_jax[{extra}]'" in lines[0], lines[0]


def test_tensorflow_alone_missing_is_named_too(python, hide_packages):
  """Where TFDS is installed but TensorFlow is not, reading data names the tensorflow
  extra (Colab ships TensorFlow; elsewhere `dlpl_jax[train,tensorflow]`)."""
  prelude = hide_packages(("tensorflow",), ("tensorflow", "tensorflow-cpu"))
  res = _run_module(python, prelude, "dlpl_jax.compact_data", ["--out", "x.npz"])
  assert res.returncode == 2, res.stderr[-3000:]
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and "pip install 'dlpl_jax[tensorflow]'" in lines[0], res.stderr
