"""benchmarks/accelerator_run.{sh,py}: the budget machinery, the GPU sampler, and the
whole script end to end at a tiny size on the CPU, on a simulated accelerator machine (a
host without TensorFlow or ml_collections and without package-index access): TensorFlow,
TFDS, TensorBoard, matplotlib, Pillow and torch unimportable, ml_collections only from
the ``.offline_packages`` folder that ``--prepare`` writes."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from benchmarks import accelerator_run
from dlpl_jax.data import compact
from dlpl_jax.data import in_memory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HIDDEN = ("tensorflow", "tensorflow_datasets", "tensorboard", "matplotlib", "PIL", "torch")


def test_a_part_past_its_limit_is_stopped(tmp_path):
  rec = accelerator_run.run_part(
      "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); "
                  "time.sleep(30)"], 1.0, str(tmp_path), grace_s=5)
  assert rec["status"] == "stopped at its limit (SIGTERM)"
  assert rec["seconds"] < 10
  assert "up" in (tmp_path / "logs" / "sleeper.log").read_text()
  ok = accelerator_run.run_part("ok", [sys.executable, "-c", "pass"], 30, str(tmp_path))
  assert (ok["status"], ok["rc"]) == ("ok", 0)


def test_parts_that_do_not_fit_are_skipped(tmp_path):
  data = tmp_path / "c.npz"
  data.write_bytes(b"")  # only its existence is checked before the budget runs out
  rc = accelerator_run.main(["--out", str(tmp_path / "out"), "--data", str(data),
                             "--budget_s", "40", "--ab", "default"])
  parts = {p["name"]: p for p in json.loads((tmp_path / "out" / "parts.json").read_text())}
  assert parts["train_fixmatch"]["status"] == "skipped: no time left"
  assert parts["ab_default"]["status"].startswith("skipped")
  assert rc == 1  # a training run did not run: the evidence is incomplete
  report = (tmp_path / "out" / "report.md").read_text()
  assert "no summary.json" in report and "| ab_default | skipped" in report


def _host_sim(tmp_path, offline: str) -> str:
  """A sitecustomize that makes the packages such a host lacks unimportable and lets
  ml_collections come only from ``offline``/site."""
  d = tmp_path / "hostsim"
  d.mkdir()
  # Hidden from the path finder, as if not installed: importlib.util.find_spec answers
  # None and `import` raises ModuleNotFoundError, as where they are not installed.
  (d / "sitecustomize.py").write_text(textwrap.dedent(f"""
      import importlib.machinery as _m
      _find = _m.PathFinder.find_spec
      def _host_find_spec(name, path=None, target=None):
        top = name.split(".")[0]
        if top in {HIDDEN!r}:
          return None
        if name == "ml_collections":
          return _find(name, [{offline + '/site'!r}], target)
        return _find(name, path, target)
      _m.PathFinder.find_spec = staticmethod(_host_find_spec)
      """))
  return str(d)


def test_the_script_end_to_end_on_a_simulated_host(tmp_path):
  d = in_memory.synthetic(labeled_per_class=4, unlabeled=300, test=100)
  x = np.concatenate([d.x_l, d.x_u])
  y = np.concatenate([d.y_l, d.y_u])
  data = str(tmp_path / "tiny.npz")
  compact.write(data, {"train": (x, y), "test": (d.x_test, d.y_test)}, "cifar10")
  offline = str(tmp_path / "offline_packages")
  py = os.path.join(REPO, ".venv", "bin", "python")
  py = py if os.path.exists(py) else sys.executable
  env = dict(os.environ, PY=py, OFFLINE_PACKAGES=offline, DATA=data, JAX_PLATFORMS="cpu")
  prep = subprocess.run(["bash", "benchmarks/accelerator_run.sh", "--prepare"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)
  assert prep.returncode == 0, prep.stderr
  assert os.path.isfile(os.path.join(offline, "site", "ml_collections", "__init__.py"))
  assert os.path.isfile(os.path.join(offline, "fallback", "yaml", "__init__.py"))
  assert not [f for _, _, files in os.walk(offline) for f in files
              if f.endswith((".pyc", ".so", "_test.py"))]  # pure Python only
  assert offline in prep.stdout
  out = str(tmp_path / "out")
  env.update(OUT=out, PYTHONPATH=_host_sim(tmp_path, offline),
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
  res = subprocess.run(
      ["bash", "benchmarks/accelerator_run.sh", "--tiny", "--data", data, "--steps", "16",
       "--eval_every", "8", "--ab_steps", "64", "--ab", "no_graphs,default,default_log512",
       "--scratch", str(tmp_path / "scratch"), "--budget_s", "540",
       # a 2-vCPU machine shared with other work: generous limits for the CNN
       "--train_limit_s", "150", "--ab_limit_s", "150", "--ab_cached_limit_s", "150"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  log = res.stdout + res.stderr
  assert "exit status 0" in log, log[-4000:]
  parts = {p["name"]: p for p in json.load(open(os.path.join(out, "parts.json")))}
  for name in ("environment", "train_fixmatch", "train_debiaspl", "ab_no_graphs",
               "ab_default", "ab_default_log512"):
    assert parts[name]["status"] == "ok", (name, parts[name])
  assert parts["analyze"]["status"].startswith("skipped: matplotlib")
  assert parts["torch_bf16_channels_last"]["status"] == "skipped: torch is not installed"
  env_log = open(os.path.join(out, "logs", "environment.log")).read()
  assert f"ml_collections from {offline}/site" in env_log
  for method in ("fixmatch", "debiaspl"):
    summary = json.load(open(os.path.join(out, "runs", method, "summary.json")))
    assert (summary["step"], summary["num_evals"], summary["method"]) == (16, 2, method)
    assert summary["interrupted"] is False
    config = json.load(open(os.path.join(out, "runs", method, "config.json")))
    assert (config["dtype"], config["data_dir"]) == ("bfloat16", data)
    train_log = open(os.path.join(out, "logs", f"train_{method}.log")).read()
    assert "TensorFlow/TensorBoard not installed" in train_log
  for name, log_every in (("no_graphs", 8), ("default", 8), ("default_log512", 32)):
    ab = json.load(open(os.path.join(out, "ab", f"{name}.json")))
    assert ab["median_steps_per_sec"] > 0
    assert (ab["xla_flags"], ab["log_every"]) == (accelerator_run.AB_VARIANTS[name],
                                                  log_every)
  host = json.load(open(os.path.join(out, "ab", "default.json")))["host"]
  assert host["back-to-back step"] > 0 and host["per_step_us"]["step dispatch"] > 0
  report = open(os.path.join(out, "report.md")).read()
  assert "| fixmatch | cnn_small | 16/16 |" in report
  assert "| = loop wall per step |" not in report and "| step dispatch |" in report
  assert "back-to-back step |" in report
  assert "| debiaspl | cnn_small | 16/16 |" in report
  assert "| no_graphs (`--xla_gpu_enable_command_buffer=`) | 8 | " in report


def test_gpu_samples_are_stamped_and_summarized_per_part(tmp_path, monkeypatch):
  """A stand-in nvidia-smi streams lines as ``-lms`` does; the sampler stamps them, and
  the report gives each part the medians of the samples inside its start and end."""
  fake = tmp_path / "bin" / "nvidia-smi"
  fake.parent.mkdir()
  fake.write_text("#!/bin/sh\nwhile true; do echo '1980, 97, 450.5, 61'; sleep 0.05; done\n")
  fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
  out = tmp_path / "out"
  out.mkdir()
  sampler = accelerator_run.GpuSampler(str(out / "gpu_samples.csv")).start()
  rec = accelerator_run.run_part("busy", [sys.executable, "-c", "import time; "
                                          "time.sleep(0.6)"], 30, str(out))
  sampler.stop()
  sampler.stop()  # idempotent
  rows = (out / "gpu_samples.csv").read_text().splitlines()
  assert rows[0] == "time,sm_mhz,util_pct,power_w,temp_c" and len(rows) > 5
  stamps = [float(r.split(",")[0]) for r in rows[1:]]
  assert stamps == sorted(stamps) and rows[1].split(",")[1:] == ["1980", "97", "450.5", "61"]
  # A part outside the sampled interval gets no row.
  late = {"name": "later", "start_unix": stamps[-1] + 100, "end_unix": stamps[-1] + 200}
  (out / "parts.json").write_text(json.dumps([rec, late]))
  table = accelerator_run._gpu_rows(str(out))  # pylint: disable=protected-access
  busy = [r for r in table if r.startswith("| busy |")]
  assert len(busy) == 1 and busy[0].endswith("| 1980 | 97 | 450 | 61 |")
  assert not any(r.startswith("| later |") for r in table)
  assert accelerator_run._gpu_rows(str(tmp_path)) == [  # pylint: disable=protected-access
      "- no samples (nvidia-smi was not found)"]
