"""The core works where the extras are absent: `pip install dlpl_jax` brings only jax,
flax, optax and numpy (and what they pull in: absl-py with optax, orbax-checkpoint with
flax), and the math, augmentation, models and the train step must import and run without
TensorFlow, TFDS, TensorBoard, matplotlib, Pillow, ml_collections or tqdm (each is made
unimportable in a fresh interpreter)."""

import os
import subprocess
import sys
import textwrap

from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = ("tensorflow", "tensorflow_datasets", "tensorboard", "matplotlib", "PIL",
          "ml_collections", "tqdm")

DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "tensorboard",
                 "matplotlib", "pillow", "ml-collections", "tqdm")
BLOCK = "import sys\n" + helpers.hide_packages(EXTRAS, DISTRIBUTIONS)


def run_without_extras(code: str) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  return res.stdout


def test_blocker_blocks():
  """As if not installed: import fails, a probe answers None, no metadata; the rest of
  the environment is untouched."""
  out = run_without_extras(f"""
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


def test_core_runs_without_the_extras():
  out = run_without_extras("""
      import types
      import jax, numpy as np
      import dlpl_jax
      from dlpl_jax import augment, input_pipeline, models, train
      c = types.SimpleNamespace(
          model="cnn_small", num_classes=10, dtype="float32", batch_size=4, mu=2,
          lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4, cosine_factor=7 / 16,
          total_steps=10, seed=0, method="debiaspl", tau=0.4, threshold=0.5,
          marginal_momentum=0.9, lambda_u=1.0, ema_decay=0.999)
      d = input_pipeline.synthetic(labeled_per_class=2, unlabeled=32, test=8)
      model = train.build_model(c)
      state = train.create_train_state(c, model, d.x_l.shape[1:])
      data = {"x_l": d.x_l, "y_l": d.y_l, "x_u": d.x_u, "y_u": d.y_u}
      for _ in range(2):
        state, m = train.jit_train_step(state, data, model=model,
                                        cfg=train.StepConfig.from_config(c))
      assert int(state.step) == 2 and np.isfinite(float(m["train/loss"]))
      assert abs(float(state.marginal.sum()) - 1) < 1e-5
      assert augment.strong(jax.random.PRNGKey(0), d.x_u[:2]).shape == (2, 32, 32, 3)
      bad = [m for m in sys.modules if m.split(".")[0] in {"tensorflow", "matplotlib",
                                                           "ml_collections"}]
      assert not bad, bad
      print("ok")
      """)
  assert out.strip().endswith("ok")


def test_readme_example_runs_without_the_extras():
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  block = readme.split("```python\n", 1)[1].split("```", 1)[0]
  run_without_extras(block)
