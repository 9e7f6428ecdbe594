"""The accelerator evidence run: FixMatch vs DebiasPL on real CIFAR-10, and the trainer's
speed under XLA:GPU launch settings beside the PyTorch reference step, in one timed go.

Started by ``benchmarks/accelerator_run.sh`` (which sets up the Python path); every part
is a subprocess with its own time limit, taken from one budget, so a slow part cannot
eat the others, and the training runs come first:

1. ``train_fixmatch``, ``train_debiaspl``: ``python -m dlpl_jax.main`` (the real
   trainer) on ``experiments/cifar10_4shot.py`` (WRN-28-2, 4 labels per class, seed 0),
   bfloat16, ``--steps`` steps with the cosine over those steps, EMA evaluation on the
   full test set every 1,024 steps, data from the compact CIFAR-10 copy (no
   TensorFlow). At its limit a run gets SIGTERM: the trainer saves, writes its
   summary (``interrupted``) and exits.
2. ``torch_*``: the PyTorch reference step (``benchmarks/torch_reference_step.py``),
   skipped where torch is missing.
3. ``ab_*``: ``benchmarks.trainer_throughput`` (the trainer on synthetic data of the
   training runs' shapes, the same total_steps, stopped after ``--ab_steps``) under
   each XLA_FLAGS variant, in the order given, and with default flags but metrics
   fetched every 512 steps instead of 128 (how much the per-log host work costs); a
   variant that no longer fits the budget is skipped, not started. The first,
   ``default``, also times the host's work per step (``--host_breakdown``): where the
   trainer's time goes beyond the same step run back to back. The default-flag
   variants compile to the debiaspl run's exact program, which the persistent
   compilation cache (``JAX_COMPILATION_CACHE_DIR``, set by the .sh) then serves.
4. ``analyze``: ``dlpl_jax.analyze`` of the two runs side by side (skipped where
   matplotlib is missing: run it afterwards where it is installed).

Everything lands in ``--out``: ``runs/{fixmatch,debiaspl}/`` (metrics.jsonl,
summary.json, config.json, ...), ``logs/<part>.log``, ``parts.json`` (per part: status,
return code, seconds, limit, start and end time), ``gpu_samples.csv`` (GPU clock,
utilization, power and temperature once a second, where nvidia-smi exists) and
``report.md`` (the tables, made from those files; also
``python benchmarks/accelerator_run.py --report_only --out DIR`` afterwards).

  python benchmarks/accelerator_run.py --out DIR [--budget_s 530] [--steps 8192]
      [--tiny]   # a tiny CPU run: small CNN, a few steps, same code paths
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/cifar10_4shot.py"
AB_VARIANTS = {  # name -> XLA_FLAGS
    "default": "",  # the trainer with default flags, with its host time per step
    "graphs_all": ("--xla_gpu_graph_min_graph_size=1 --xla_gpu_enable_command_buffer="
                   "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"),
    "no_graphs": "--xla_gpu_enable_command_buffer=",
    "default_log512": "",  # the same, metrics fetched every 512 steps instead of 128
}
# Variants that also time the host's work per step (trainer_throughput --host_breakdown:
# dispatch, waiting, fetches, writer, the loop's Python, and the same step back to back
# in the same process), which is what explains a gap between the trainer and the step.
HOST_BREAKDOWN = ("default",)
# The variants with default flags run the debiaspl training run's exact program (same
# config and total_steps, stopped early), so the persistent compilation cache serves
# them in seconds: they get a shorter limit.
CACHED = ("default", "default_log512")


class Budget:
  """Seconds left before ``deadline``; each part gets min(its own limit, what is left
  minus what the parts after it reserve)."""

  def __init__(self, total_s: float):
    self.deadline = time.monotonic() + total_s

  def left(self) -> float:
    return self.deadline - time.monotonic()


class GpuSampler:
  """Samples GPU 0 once a second for the whole run (``nvidia-smi --loop-ms``, one process):
  SM clock, utilization, power and temperature, each line stamped with ``time.time()``
  on arrival, into ``path`` (CSV). The report gives each part's medians: a trainer
  whose GPU utilization stays under the back-to-back step's is losing time on the
  host; a falling SM clock is power or heat. No-op where nvidia-smi is missing."""

  COLUMNS = ("sm_mhz", "util_pct", "power_w", "temp_c")
  QUERY = "clocks.sm,utilization.gpu,power.draw,temperature.gpu"

  def __init__(self, path: str, interval_ms: int = 1000):
    self.path, self.interval_ms = path, interval_ms
    self._proc = self._thread = None

  def start(self) -> "GpuSampler":
    exe = shutil.which("nvidia-smi")
    if exe is None:
      return self
    self._proc = subprocess.Popen(
        [exe, f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits", "-i", "0",
         f"--loop-ms={self.interval_ms}"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    self._thread = threading.Thread(target=self._copy, daemon=True)
    self._thread.start()
    return self

  def _copy(self) -> None:
    with open(self.path, "w", encoding="utf-8") as f:
      f.write("time," + ",".join(self.COLUMNS) + "\n")
      for line in self._proc.stdout:
        fields = [x.strip() for x in line.split(",")]
        if len(fields) == len(self.COLUMNS):
          f.write(f"{time.time():.2f}," + ",".join(fields) + "\n")
          f.flush()

  def stop(self) -> None:
    if self._proc is None:
      return
    proc, self._proc = self._proc, None
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
    self._thread.join(timeout=10)


def run_part(name: str, cmd: list[str], limit_s: float, out: str, env=None,
             grace_s: float = 25.0) -> dict:
  """Runs ``cmd`` with its output in ``out/logs/name.log``; at ``limit_s`` sends SIGTERM
  to its process group, and SIGKILL ``grace_s`` later. Returns its record."""
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  log_path = os.path.join(out, "logs", f"{name}.log")
  rec = {"name": name, "cmd": " ".join(cmd), "limit_s": round(limit_s, 1),
         "start_unix": round(time.time(), 2)}
  t = time.monotonic()
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(f"$ {rec['cmd']}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=max(limit_s, 1))
      status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGTERM)
      status = "stopped at its limit (SIGTERM)"
      try:
        rc = proc.wait(timeout=grace_s)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        status = "killed at its limit"
  rec.update(status=status, rc=rc, seconds=round(time.monotonic() - t, 1),
             end_unix=round(time.time(), 2))
  print(f"[accelerator_run] {name}: {status} (rc {rc}) in {rec['seconds']}s "
        f"(limit {rec['limit_s']}s)", file=sys.stderr, flush=True)
  return rec


def train_cmd(method: str, args) -> list[str]:
  workdir = os.path.join(args.out, "runs", method)
  cmd = [sys.executable, "-m", "dlpl_jax.main", f"--config={CONFIG}:{method}"
         + (",smoke" if args.tiny else ""),
         f"--workdir={workdir}", f"--config.data_dir={args.data}",
         "--config.dtype=bfloat16", f"--config.total_steps={args.steps}",
         f"--config.eval_every={args.eval_every}",
         f"--config.log_every={8 if args.tiny else 128}",
         f"--config.checkpoint_every={args.steps}", "--config.progress=True"]
  if args.tiny:  # the smoke CNN on every test image
    cmd += ["--config.eval_examples=0", "--config.eval_batch_size=500"]
  return cmd


def ab_cmd(name: str, args) -> list[str]:
  log_every = ((32 if args.tiny else 512) if name.endswith("_log512")
               else (8 if args.tiny else 128))
  steps = max(args.ab_steps, 3 * log_every)
  return [sys.executable, "-m", "benchmarks.trainer_throughput",
          f"--config={CONFIG}" + (":smoke" if args.tiny else ""), "--dtype=bfloat16",
          f"--steps={steps}", f"--schedule_steps={max(args.steps, steps)}",
          f"--work_every={max(args.steps, steps)}", f"--log_every={log_every}",
          f"--workdir={os.path.join(args.scratch, 'ab_' + name)}",
          f"--json={os.path.join(args.out, 'ab', name + '.json')}"] + (
              ["--unlabeled=2000", "--test=100"] if args.tiny else []) + (
              ["--host_breakdown"] if name in HOST_BREAKDOWN else [])


def importable(module: str) -> bool:
  return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                        capture_output=True).returncode == 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--data", default="data/cifar10_compact.npz")
  p.add_argument("--budget_s", type=float, default=530.0,
                 help="the whole run, start-up to report (one H100: 530 s of 9 min)")
  p.add_argument("--steps", type=int, default=8192)
  p.add_argument("--eval_every", type=int, default=1024)
  p.add_argument("--train_limit_s", type=float, default=160.0, help="per training run")
  p.add_argument("--ab_steps", type=int, default=640)
  p.add_argument("--ab_limit_s", type=float, default=80.0, help="per XLA_FLAGS variant")
  p.add_argument("--ab_cached_limit_s", type=float, default=45.0,
                 help=f"per variant served by the compilation cache: {CACHED}")
  p.add_argument("--ab", default="default,graphs_all,no_graphs,default_log512",
                 help=f"variants in order, from {sorted(AB_VARIANTS)}")
  p.add_argument("--breakdown_extra_s", type=float, default=20.0,
                 help=f"added to the limit of {HOST_BREAKDOWN} (the host-time breakdown: "
                      "the same steps back to back and 220 timed dispatches)")
  p.add_argument("--torch_limit_s", type=float, default=35.0, help="per PyTorch setting")
  p.add_argument("--scratch", default="/tmp/accelerator_run")
  p.add_argument("--tiny", action="store_true",
                 help="a tiny run on the CPU (small CNN, same code paths)")
  p.add_argument("--report_only", action="store_true")
  args = p.parse_args(argv)
  args.out = os.path.abspath(args.out)
  if args.report_only:
    print(write_report(args.out))
    return 0
  unknown = [v for v in args.ab.split(",") if v and v not in AB_VARIANTS]
  if unknown:
    p.error(f"unknown --ab variants {unknown}; valid: {sorted(AB_VARIANTS)}")
  if not os.path.isfile(os.path.join(REPO, args.data)) and not os.path.isfile(args.data):
    p.error(f"{args.data} not found: make it with python -m dlpl_jax.compact_data "
            f"--out {args.data} (see benchmarks/accelerator_run.sh)")
  budget = Budget(args.budget_s)
  os.makedirs(os.path.join(args.out, "ab"), exist_ok=True)
  sampler = GpuSampler(os.path.join(args.out, "gpu_samples.csv")).start()
  try:
    parts = []

    def record(rec):
      parts.append(rec)
      with open(os.path.join(args.out, "parts.json"), "w", encoding="utf-8") as f:
        json.dump(parts, f, indent=1)

    def skip(name, why):
      record({"name": name, "status": f"skipped: {why}", "rc": None, "seconds": 0,
              "limit_s": 0})
      print(f"[accelerator_run] {name}: skipped ({why})", file=sys.stderr, flush=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    record(run_part("environment", [sys.executable, "-c", (
        "import jax, flax, optax, numpy; print('python', __import__('sys').version.split()[0],"
        " 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, "
        "'numpy', numpy.__version__); print(jax.devices()); import os, importlib.util as u; "
        "print('XLA_FLAGS', repr(os.environ.get('XLA_FLAGS'))); "
        "print('ml_collections from', (u.find_spec('ml_collections') or "
        "type('', (), {'origin': None})).origin)")], 60, args.out, env))
    # 1. The two training runs, protected: each keeps its own limit (the report and the
    #    parts after them get what is left).
    for method in ("fixmatch", "debiaspl"):
      limit = min(args.train_limit_s, budget.left() - 30)
      if limit < 30:
        skip(f"train_{method}", "no time left")
        continue
      # XLA_FLAGS as the "default" A/B variant: the same compile options, so the
      # persistent compilation cache serves that variant the debiaspl run's program.
      record(run_part(f"train_{method}", train_cmd(method, args), limit, args.out,
                      dict(env, XLA_FLAGS=AB_VARIANTS["default"])))
    # 2. The PyTorch reference step, its fastest setting; 3. the XLA_FLAGS A/B of the
    #    trainer (a variant starts only when its whole limit fits); then the references'
    #    own float32 NCHW setting, if time is left.
    have_torch = importable("torch")

    def torch_part(name, extra):
      limit = min(args.torch_limit_s, budget.left() - 15)
      if not have_torch:
        return skip(name, "torch is not installed")
      if limit < 20:
        return skip(name, "no time left")
      device = "cpu" if args.tiny else "cuda"
      steps = (["--steps", "3", "--warmup", "1", "--batch", "8", "--mu", "2"] if args.tiny
               else ["--steps", "100", "--warmup", "20"])
      cmd = [sys.executable, "benchmarks/torch_reference_step.py", "--device", device]
      return record(run_part(name, cmd + steps + extra, limit, args.out, env))

    torch_part("torch_bf16_channels_last", ["--bf16", "--channels_last"])
    for name in filter(None, args.ab.split(",")):
      limit = ((args.ab_cached_limit_s if name in CACHED else args.ab_limit_s)
               + (args.breakdown_extra_s if name in HOST_BREAKDOWN else 0))
      if budget.left() - 15 < limit:
        skip(f"ab_{name}", f"less than its {limit:.0f} s limit left")
        continue
      record(run_part(f"ab_{name}", ab_cmd(name, args), limit, args.out,
                      dict(env, XLA_FLAGS=AB_VARIANTS[name])))
    torch_part("torch_f32_nchw", [])
    # 4. Side-by-side analysis (matplotlib may be missing where this runs).
    runs = [os.path.join(args.out, "runs", m) for m in ("debiaspl", "fixmatch")]
    if not importable("matplotlib"):
      skip("analyze", "matplotlib is not installed: run `python -m dlpl_jax.analyze "
           "OUT/runs/debiaspl OUT/runs/fixmatch` where it is")
    elif budget.left() < 15:
      skip("analyze", "no time left")
    else:
      record(run_part("analyze", [sys.executable, "-m", "dlpl_jax.analyze"] + runs,
                      min(60, budget.left() - 5), args.out, env))
    sampler.stop()
    print(write_report(args.out))
    failed = [r["name"] for r in parts if r["name"].startswith("train_") and r["rc"] != 0]
    return 1 if failed else 0
  finally:
    sampler.stop()


# ----------------------------------------------------------------------------------
# The report: tables from the files the parts wrote.


def _read_json(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _plain_rates(workdir: str, recs: list[dict]) -> list[float]:
  """The run's train/steps_per_sec windows, less the first and those holding an eval."""
  cfg = _read_json(os.path.join(workdir, "config.json")) or {}
  log_every, eval_every = cfg.get("log_every", 128), cfg.get("eval_every", 1024)
  rows = [r for r in recs if r.get("kind") == "train" and "train/steps_per_sec" in r][1:]
  return [r["train/steps_per_sec"] for r in rows
          if (r["step"] - log_every) % eval_every and r["step"] % eval_every]


def _run_rows(out: str) -> list[str]:
  from dlpl_jax.training import metrics  # pylint: disable=import-outside-toplevel
  rows = ["| method | model | steps | final EMA top-1 | median of last 4 evals | evals | pseudo-label "
          "acc | imbalance | mask rate | trainer steps/s (median window) | wall s |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for method in ("fixmatch", "debiaspl"):
    wd = os.path.join(out, "runs", method)
    s = _read_json(os.path.join(wd, "summary.json"))
    if s is None:
      rows.append(f"| {method} | | no summary.json (see logs/train_{method}.log) |"
                  + " |" * 8)
      continue
    recs = (metrics.read_jsonl(os.path.join(wd, "metrics.jsonl"))
            if os.path.isfile(os.path.join(wd, "metrics.jsonl")) else [])
    evals = [r["eval/top1"] for r in recs if r.get("kind") == "eval"]
    rates = _plain_rates(wd, recs)
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)
    model = (_read_json(os.path.join(wd, "config.json")) or {}).get("model", "?")
    rows.append(
        f"| {method} | {model} | {s['step']}/{s['total_steps']}"
        f"{' (interrupted)' if s.get('interrupted') else ''} | {fmt(s.get('final_top1'))} | "
        f"{fmt(statistics.median(evals[-4:]) if evals else None)} | {s.get('num_evals')} | "
        f"{fmt(s.get('final_pseudo_acc'), '{:.3f}')} | "
        f"{fmt(s.get('final_pseudo_imbalance'), '{:.2f}')} | "
        f"{fmt(s.get('final_mask_rate'), '{:.3f}')} | "
        f"{fmt(statistics.median(rates) if rates else None, '{:.1f}')} | "
        f"{fmt(s.get('wall_seconds_this_invocation'), '{:.0f}')} |")
  return rows


def _ab_rows(out: str) -> list[str]:
  rows = ["| variant (XLA_FLAGS) | log every | trainer steps/s (median window, first "
          "skipped) | windows | compile + run wall s |", "|---|---:|---:|---|---:|"]
  from dlpl_jax.training import metrics  # pylint: disable=import-outside-toplevel
  wd = os.path.join(out, "runs", "debiaspl")
  if os.path.isfile(os.path.join(wd, "metrics.jsonl")):
    rates = _plain_rates(wd, metrics.read_jsonl(os.path.join(wd, "metrics.jsonl")))
    if rates:
      rows.append(f"| (the debiaspl training run above, default flags, real data) | 128 | "
                  f"{statistics.median(rates):.1f} | {' '.join(f'{x:.0f}' for x in rates)} "
                  "| |")
  for name in AB_VARIANTS:
    r = _read_json(os.path.join(out, "ab", f"{name}.json"))
    if r is None:
      rows.append(f"| {name} (`{AB_VARIANTS[name]}`) | | not measured (parts.json) | | |")
      continue
    med = r.get("median_steps_per_sec")
    rows.append(f"| {name} (`{AB_VARIANTS[name]}`) | {r.get('log_every', '')} | "
                f"{'-' if med is None else f'{med:.1f}'} | "
                f"{' '.join(f'{x:.0f}' for x in r['window_steps_per_sec'])} | "
                f"{r['wall_s']:.0f} |")
  return rows


def _host_rows(out: str) -> list[str]:
  """The host's time per step in the trainer (the variants in HOST_BREAKDOWN)."""
  rows = []
  for name in HOST_BREAKDOWN:
    r = _read_json(os.path.join(out, "ab", f"{name}.json"))
    if r is None or "host" not in r:
      rows.append(f"- {name}: not measured (parts.json)")
      continue
    h = r["host"]
    rows += [f"{name} (`{AB_VARIANTS[name]}`), µs per step over the steps after the "
             "compiling one:", "", "| µs per step | what |", "|---:|---|"]
    rows += [f"| {v:.0f} | {k} |" for k, v in sorted(h["per_step_us"].items(),
                                                    key=lambda kv: -kv[1])]
    rows += [f"| **{h[k]:.0f}** | {k} |" for k in (
        "loop wall per step", "back-to-back step",
        "loop minus back to back (host cost added by the loop)") if k in h]
    rows += [f"| {v:.0f} | one dispatch, {k} |"
             for k, v in (r.get("dispatch_us") or {}).items()]
  return rows


def _gpu_rows(out: str) -> list[str]:
  """Each part's median GPU SM clock, utilization, power and temperature, from
  ``gpu_samples.csv`` (:class:`GpuSampler`) and the parts' start and end times."""
  path = os.path.join(out, "gpu_samples.csv")
  if not os.path.isfile(path):
    return ["- no samples (nvidia-smi was not found)"]
  samples = []
  with open(path, encoding="utf-8") as f:
    next(f, None)
    for line in f:
      try:
        samples.append([float(x) for x in line.split(",")])
      except ValueError:  # "[N/A]" or a cut line
        continue
  rows = ["| part | samples | SM clock MHz | GPU utilization % | power W | temperature C |",
          "|---|---:|---:|---:|---:|---:|"]
  for r in _read_json(os.path.join(out, "parts.json")) or []:
    if "start_unix" not in r or "end_unix" not in r:
      continue
    inside = [x[1:] for x in samples if r["start_unix"] <= x[0] <= r["end_unix"]]
    if not inside:
      continue
    med = [statistics.median(col) for col in zip(*inside)]
    rows.append(f"| {r['name']} | {len(inside)} | " + " | ".join(f"{v:.0f}" for v in med)
                + " |")
  return rows


def _torch_rows(out: str) -> list[str]:
  rows = []
  for name in ("torch_bf16_channels_last", "torch_f32_nchw"):
    path = os.path.join(out, "logs", f"{name}.log")
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.startswith(("torch ", "step:"))]
      rows.append(f"- {name}: " + (" / ".join(lines) if lines else "no timing (see log)"))
  return rows or ["- not run (parts.json)"]


def write_report(out: str) -> str:
  parts = _read_json(os.path.join(out, "parts.json")) or []
  env_log = os.path.join(out, "logs", "environment.log")
  env = open(env_log, encoding="utf-8").read().strip() if os.path.isfile(env_log) else "?"
  lines = ["# Accelerator run", "", "```", env, "```", "",
           "## FixMatch vs DebiasPL (CIFAR-10, compact copy, 4 labels per class, bf16, "
           "seed 0)",
           ""] + _run_rows(out) + [
           "", "## Trainer throughput by XLA_FLAGS (synthetic data, bf16)", ""
           ] + _ab_rows(out) + ["", "## Host time per step in the trainer", ""
           ] + _host_rows(out) + ["", "## GPU clock, utilization and power per part "
           "(medians of 1 s samples)", ""
           ] + _gpu_rows(out) + ["", "## PyTorch reference step (no augmentation)", ""
           ] + _torch_rows(out) + ["", "## Parts", "",
           "| part | status | rc | seconds | limit s |", "|---|---|---:|---:|---:|"] + [
           f"| {r['name']} | {r['status']} | {r['rc']} | {r['seconds']} | {r['limit_s']} |"
           for r in parts]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text


if __name__ == "__main__":
  sys.exit(main())
