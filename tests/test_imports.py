"""The package's import structure: TensorFlow (and, for ``dlpl_jax.augment``, matplotlib)
is imported only where a dataset is read or a figure drawn, never by importing the math,
the augmentation, the models, the train step and its input stage, the loop, the benchmark
or the analysis. Checked in a fresh interpreter (this process has imported them already)."""

import textwrap

# Imported in this order; the first group must not import matplotlib either (the
# augment package's docstring: only ``python -m dlpl_jax.augment --show`` draws).
NO_MATPLOTLIB = ("dlpl_jax", "dlpl_jax.loss", "dlpl_jax.pseudo_label", "dlpl_jax.multiview",
                 "dlpl_jax.augment")
NO_TENSORFLOW = NO_MATPLOTLIB + (
    "dlpl_jax.models", "dlpl_jax.training.state", "dlpl_jax.training.step",
    "dlpl_jax.training.inputs", "dlpl_jax.training.loop", "dlpl_jax.training.metrics",
    "dlpl_jax.data.in_memory", "dlpl_jax.tools.bench", "dlpl_jax.tools.analyze")


def test_import_does_not_pull_tensorflow(python):
  code = textwrap.dedent(f"""
      import importlib, sys
      def loaded(*tops):
        return sorted(m for m in sys.modules if m.split(".")[0] in tops)
      for name in {NO_MATPLOTLIB!r}:
        importlib.import_module(name)
      bad = loaded("tensorflow", "tensorflow_datasets", "matplotlib")
      assert not bad, bad
      for name in {NO_TENSORFLOW!r}:
        importlib.import_module(name)
      bad = loaded("tensorflow", "tensorflow_datasets")
      assert not bad, bad
      print("ok")
      """)
  result = python(["-c", code], timeout=300)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
