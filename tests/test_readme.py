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
