"""The notebooks under experiments/notebooks: committed clean, and each runs headless top
to bottom in its small setting.

A notebook's parameters are the assignments in its one code cell tagged "parameters";
the test inserts a cell after it that sets the small setting (``SMALL = True``), a
temporary run folder (``WORKDIR``, ``RUNS_DIR``) and no TensorBoard, for the names that
the parameter cell assigns. The kernel is this interpreter (a kernelspec written to a
temporary ``JUPYTER_PATH``), with the environment of the tests (CPU-only JAX, the
prepared CIFAR-10 found by ``tests/conftest.py``). Needs nbclient, nbformat and ipykernel
(the ``test`` extra); skipped without them or without CIFAR-10.
"""

import json
import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "experiments" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _cells(path: pathlib.Path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)["cells"]


def _source(cell: dict) -> str:
  src = cell.get("source", "")
  return "".join(src) if isinstance(src, list) else src


def _parameter_cells(cells: list[dict]) -> list[int]:
  return [i for i, c in enumerate(cells) if c.get("cell_type") == "code"
          and "parameters" in c.get("metadata", {}).get("tags", [])]


def _assigned(source: str) -> set[str]:
  return set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", source, flags=re.M))


def test_the_notebooks_are_there():
  assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "own_code.ipynb",
                                         "bias_analysis.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
  """No outputs, execution counts or widget state in the committed file."""
  with open(path, encoding="utf-8") as f:
    nb = json.load(f)
  for i, cell in enumerate(nb["cells"]):
    if cell.get("cell_type") != "code":
      continue
    assert cell.get("outputs") == [], f"{path.name}: cell {i} has outputs; clear them"
    assert cell.get("execution_count") is None, (
        f"{path.name}: cell {i} has an execution count; clear outputs")
  assert "widgets" not in nb.get("metadata", {}), f"{path.name}: widget state in metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameter_cell_with_a_small_setting(path):
  cells = _cells(path)
  params = _parameter_cells(cells)
  assert len(params) == 1, f"{path.name}: {len(params)} cells tagged 'parameters', want 1"
  names = _assigned(_source(cells[params[0]]))
  assert "SMALL" in names or "RUNS_DIR" in names, (
      f"{path.name}: the parameter cell sets neither SMALL nor RUNS_DIR: {sorted(names)}")


def test_own_code_uses_only_the_math():
  """own_code.ipynb is someone else's loop: it must not use this package's trainer or
  train step, only the math (and the augmentation)."""
  text = "\n".join(_source(c) for c in _cells(NOTEBOOK_DIR / "own_code.ipynb")
                   if c.get("cell_type") == "code")
  for name in ("debias", "update_marginal", "adaptive_margin"):
    assert f"dlpl_jax.{name}" in text or f"dlpl_jax.loss.{name}" in text or (
        f"dlpl_jax.pseudo_label.{name}" in text), name
  assert not re.search(r"dlpl_jax\.(trainer|train)\b|from dlpl_jax import .*\btrain", text)


def _overrides(tmp_path: pathlib.Path) -> dict[str, object]:
  return {"SMALL": True, "WORKDIR": str(tmp_path / "run"), "RUNS_DIR": str(tmp_path / "runs"),
          "TENSORBOARD": False}


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> str:
  """A 'python3' kernelspec running this interpreter, first on JUPYTER_PATH, and Jupyter's
  runtime files in tmp_path; returns the kernel name."""
  spec = tmp_path / "jupyter" / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (tests)", "language": "python"}), encoding="utf-8")
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  return "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_headless_in_the_small_setting(path, cifar_dir, kernel_env, tmp_path,
                                           monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", cifar_dir)  # the kernel reads the data the tests found
  nbclient = pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")
  pytest.importorskip("ipykernel")
  nb = nbformat.read(path, as_version=4)
  (i,) = _parameter_cells(nb.cells)
  names = _assigned(nb.cells[i].source)
  lines = [f"{k} = {v!r}" for k, v in _overrides(tmp_path).items() if k in names]
  injected = nbformat.v4.new_code_cell("# Injected by tests/test_notebooks.py\n"
                                       + "\n".join(lines))
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(i + 1, injected)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel_env,
                                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") == "error"]
  assert not errors
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, f"{path.name} displayed no figure"
