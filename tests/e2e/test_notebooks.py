"""The notebooks under experiments/notebooks: committed clean, and each runs headless top
to bottom in its small setting on a fresh runtime, preparing its own data.

A notebook's parameters are the assignments in its one code cell tagged "parameters";
the test inserts a cell after it that sets the small setting (``SMALL = True``), a
temporary run folder (``WORKDIR``, ``RUNS_DIR``) and no TensorBoard, for the names that
the parameter cell assigns. The kernel is this interpreter (a kernelspec written to a
temporary ``JUPYTER_PATH``) with a CPU-only JAX.

A fresh runtime has no data: ``TFDS_DATA_DIR`` is an EMPTY temporary folder, and a
hidden first cell replaces TFDS's download (``DatasetBuilder.download_and_prepare``) by
a copy of the prepared dataset from the real TFDS folder (the ``cifar_dir`` fixture),
noting each call. So a notebook runs to its end only if it prepares the data it reads
(``dlpl_jax.data.tfds.prepare``), and nothing is downloaded. Needs nbclient, nbformat
and ipykernel (the ``test`` extra); skipped without them or without CIFAR-10.
"""

import json
import os
import pathlib
import re
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "experiments" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _cells(path: pathlib.Path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)["cells"]


def _source(cell: dict) -> str:
  src = cell.get("source", "")
  return "".join(src) if isinstance(src, list) else src


def _code(path: pathlib.Path) -> str:
  return "\n".join(_source(c) for c in _cells(path) if c.get("cell_type") == "code")


def _parameter_cells(cells: list[dict]) -> list[int]:
  return [i for i, c in enumerate(cells) if c.get("cell_type") == "code"
          and "parameters" in c.get("metadata", {}).get("tags", [])]


def _assigned(source: str) -> set[str]:
  return set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", source, flags=re.M))


# --- the committed files --------------------------------------------------------------


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prepares_its_data_with_the_package_helper(path):
  """Each notebook prepares the data it reads with dlpl_jax.data.tfds.prepare, imports
  the package's current modules, and does not download or prepare data any other way."""
  code = _code(path)
  assert re.search(r"from dlpl_jax\.data import tfds as (\w+)", code), path.name
  alias = re.search(r"from dlpl_jax\.data import tfds as (\w+)", code).group(1)
  assert f"{alias}.prepare(" in code, path.name
  assert "download_and_prepare" not in code and "download=True" not in code, path.name
  assert "download=ON_COLAB" not in code and "tfds.builder(" not in code, path.name
  # the modules of the package's layout, not those it replaced
  old = re.findall(r"dlpl_jax\.(trainer|train|analyze|input_pipeline|data\.load)\b|"
                   r"from dlpl_jax import [^\n]*\b(trainer|train|analyze|input_pipeline)\b",
                   code)
  assert not old, (path.name, old)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_texts_speak_of_the_project_only(path):
  """No folder outside the repository, no claim that host.configure finds data."""
  text = "\n".join(_source(c) for c in _cells(path))
  assert "../" not in text, path.name
  assert not re.search(r"host\.configure\(\)[^\n]*\b(data|finds|TFDS)\b", text), path.name


def test_own_code_uses_only_the_math():
  """own_code.ipynb is someone else's loop: it must not use this package's trainer or
  train step, only the math (and the augmentation, and the data helper)."""
  text = _code(NOTEBOOK_DIR / "own_code.ipynb")
  for name in ("debias", "update_marginal", "adaptive_margin"):
    assert f"dlpl_jax.{name}" in text or f"dlpl_jax.loss.{name}" in text or (
        f"dlpl_jax.pseudo_label.{name}" in text), name
  assert not re.search(r"dlpl_jax\.(trainer|train|training)\b|"
                       r"from dlpl_jax import .*\btrain", text)


@pytest.mark.parametrize("name", ["quickstart.ipynb", "bias_analysis.ipynb"])
def test_thin_clients_train_with_the_library(name):
  """quickstart and bias_analysis train through the library's loop and draw with its
  analysis; they hold no step or loop of their own."""
  text = _code(NOTEBOOK_DIR / name)
  assert "from dlpl_jax.training import loop" in text and "loop.train_and_evaluate(" in text
  assert "from dlpl_jax.tools import analyze" in text
  assert not re.search(r"jax\.(value_and_grad|grad)\(|optax\.|def train_step", text), name


# --- headless runs --------------------------------------------------------------------


def _overrides(tmp_path: pathlib.Path) -> dict[str, object]:
  return {"SMALL": True, "WORKDIR": str(tmp_path / "run"), "RUNS_DIR": str(tmp_path / "runs"),
          "TENSORBOARD": False}


# The hidden first cell: TFDS's download replaced by a copy from the prepared folder
# {source!r}; each call noted in {log!r} (one JSON line: dataset, version, data_dir).
FAKE_DOWNLOAD = textwrap.dedent("""\
    # Injected by tests/e2e/test_notebooks.py: a fresh runtime whose downloads are copies.
    def _dlpl_test_fake_download():
        import json, os, shutil
        import tensorflow_datasets as tfds

        def download_and_prepare(self, *args, **kwargs):
            source = os.path.join({source!r}, self.name, str(self.version))
            os.makedirs(self.data_dir, exist_ok=True)
            for name in os.listdir(source):
                shutil.copyfile(os.path.join(source, name), os.path.join(self.data_dir, name))
            with open({log!r}, "a", encoding="utf-8") as f:
                f.write(json.dumps({{"name": self.name, "version": str(self.version),
                                    "data_dir": self.data_dir}}) + "\\n")

        tfds.core.DatasetBuilder.download_and_prepare = download_and_prepare

    _dlpl_test_fake_download()
    del _dlpl_test_fake_download
    """)


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
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  return "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_headless_on_a_fresh_runtime_in_the_small_setting(path, cifar_dir, kernel_env,
                                                              tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")
  pytest.importorskip("ipykernel")
  data_dir, downloads = tmp_path / "tensorflow_datasets", tmp_path / "downloads.jsonl"
  data_dir.mkdir()
  monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))  # a fresh runtime: no data at all
  home = tmp_path / "home"  # nor in ~/tensorflow_datasets
  home.mkdir()
  import matplotlib  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_cachedir())  # its font cache, kept
  monkeypatch.setenv("HOME", str(home))
  nb = nbformat.read(path, as_version=4)
  (i,) = _parameter_cells(nb.cells)
  names = _assigned(nb.cells[i].source)
  lines = [f"{k} = {v!r}" for k, v in _overrides(tmp_path).items() if k in names]
  injected = nbformat.v4.new_code_cell("# Injected by tests/e2e/test_notebooks.py\n"
                                       + "\n".join(lines))
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(i + 1, injected)
  hidden = nbformat.v4.new_code_cell(FAKE_DOWNLOAD.format(source=cifar_dir,
                                                          log=str(downloads)))
  hidden.metadata["tags"] = ["injected-fake-download"]
  nb.cells.insert(0, hidden)
  # Without the notebook's prepare step nothing would provide the data.
  assert os.listdir(data_dir) == [] and os.listdir(home) == []
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel_env,
                                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") == "error"]
  assert not errors
  # It ran to the end: every code cell ran, the last one included.
  assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
  # The notebook prepared CIFAR-10 once, in the empty folder, through TFDS's download.
  calls = [json.loads(l) for l in downloads.read_text(encoding="utf-8").splitlines()]
  assert [(c["name"], c["version"]) for c in calls] == [("cifar10", "3.0.2")], calls
  assert pathlib.Path(calls[0]["data_dir"]).resolve().is_relative_to(data_dir.resolve())
  assert os.listdir(data_dir) == ["cifar10"]
  assert not (home / "tensorflow_datasets").exists()
  # Results printed and figures drawn.
  text = "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                 for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert re.search(r"top-1|test accuracy|final_top1", text), text[-3000:]
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, f"{path.name} displayed no figure"
