"""The README's code example runs as written (docs match the code)."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
  text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README has no python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  marginal = namespace["marginal"]
  assert marginal.shape == (10,)
  assert abs(float(marginal.sum()) - 1.0) < 1e-5
  assert float(namespace["loss"]) >= 0.0


def test_notebook_code_cells_compile_and_use_existing_api():
  import json  # pylint: disable=g-import-not-at-top
  nb = json.load(open(os.path.join(REPO, "experiments", "colab_tpu.ipynb"), encoding="utf-8"))
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code
  for cell in code:
    src = "".join(cell["source"])
    py = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
    compile(py, "colab_tpu.ipynb", "exec")
  from dlpl_jax import analyze, trainer  # pylint: disable=g-import-not-at-top
  from experiments import cifar10_4shot  # pylint: disable=g-import-not-at-top
  assert callable(trainer.train_and_evaluate) and callable(analyze.analyze)
  assert cifar10_4shot.get_config("smoke").model == "cnn_small"
