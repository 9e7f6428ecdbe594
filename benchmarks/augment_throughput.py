"""Augmented images per second: dlpl_jax.augment (jitted JAX) vs Pillow per image.

Measures, on the same 448 real CIFAR-10 training images in one run:
  * JAX ``weak(key, x)`` and ``strong(key, x)`` at batch 448 (jit, after warm-up, a new
    key each repeat, ``block_until_ready``);
  * the Pillow reference of benchmarks/pil_reference.py, one image at a time as a PyTorch
    data loader worker would (``RandomWeak`` / ``RandomStrong``: kekmodel's flip + crop
    and RandAugmentMC(2, 10) + Cutout), uint8 numpy in and out, single process.
Reports the median over repeats, prints a markdown table and writes it, with the
command, JAX version and CPU, to benchmarks/results/augment_throughput.md.

Usage: python benchmarks/augment_throughput.py [--batch 448] [--repeats 7] [--out PATH]
       taskset -c 0 python benchmarks/augment_throughput.py --append  # one core
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import pil_reference  # noqa: E402  pylint: disable=wrong-import-position
from dlpl_jax import augment  # noqa: E402  pylint: disable=wrong-import-position
from dlpl_jax.data import datasets  # noqa: E402  pylint: disable=wrong-import-position


def _cpu() -> str:
  model = platform.processor() or "unknown"
  try:
    for line in open("/proc/cpuinfo", encoding="utf-8"):
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  try:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True,
                           check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    nproc = str(os.cpu_count())
  return f"{model}, nproc={nproc}"


def _load(n: int) -> np.ndarray:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  data_dir = datasets.tfds_data_dir()
  if not tfds.builder("cifar10", data_dir=data_dir).is_prepared():
    raise SystemExit(f"CIFAR-10 is not prepared in {data_dir}: set TFDS_DATA_DIR")
  ds = tfds.load("cifar10", split=f"train[:{n}]", batch_size=-1, download=False,
                 data_dir=data_dir)
  return tfds.as_numpy(ds)["image"]


def _time_jax(fn, images, repeats: int) -> float:
  x = jax.device_put(images)
  key = jax.random.key(0)
  fn(key, x).block_until_ready()  # compile
  fn(jax.random.fold_in(key, 1), x).block_until_ready()  # warm-up
  times = []
  for i in range(repeats):
    k = jax.random.fold_in(key, 100 + i)
    jax.block_until_ready(k)
    t0 = time.perf_counter()
    fn(k, x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _time_pil(aug, images, repeats: int) -> float:
  for img in images[:32]:
    aug(img)  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = np.stack([aug(img) for img in images])
    times.append(time.perf_counter() - t0)
  assert out.shape == images.shape
  return float(np.median(times))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=448)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/augment_throughput.md"))
  parser.add_argument("--append", action="store_true",
                      help="append a section to --out instead of overwriting it (e.g. "
                           "for a second run under `taskset -c 0`)")
  args = parser.parse_args(argv)

  images = _load(args.batch)
  rows = []
  for view, jax_fn, pil_aug in [
      ("weak", augment.weak, pil_reference.RandomWeak(0)),
      ("strong", augment.strong, pil_reference.RandomStrong(0)),
  ]:
    t_jax = _time_jax(jax_fn, images, args.repeats)
    t_pil = _time_pil(pil_aug, images, args.repeats)
    rows.append((view, args.batch / t_jax, t_jax, args.batch / t_pil, t_pil))

  device = jax.devices()[0]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
  lines = [
      (f"## Run with {cores} core(s)" if args.append else
       f"# Augmentation throughput: dlpl_jax.augment vs Pillow ({cores} core(s))"),
      "",
      f"Command: `{' '.join(shlex.quote(a) for a in [sys.executable.split('/')[-1]] + sys.argv)}`",
      f"JAX {jax.__version__} on {device.platform} ({device.device_kind}); "
      f"CPU: {_cpu()}, cores this process may use: {cores}; Python {platform.python_version()}; "
      f"Pillow {pil_reference.Image.__version__}.",
      f"Batch {args.batch} real CIFAR-10 train images; median of {args.repeats} "
      "repeats. JAX: one jitted call per batch after compile + warm-up, new key per "
      "repeat, `block_until_ready`. Pillow: benchmarks/pil_reference.py `RandomWeak` / "
      "`RandomStrong` (kekmodel flip + reflect crop; + RandAugmentMC(2, 10) + "
      "Cutout 16) per image, uint8 numpy in/out, one process.",
      "",
      "| view | JAX img/s | JAX ms/batch | Pillow img/s | Pillow ms/batch | JAX / Pillow |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for view, r_jax, t_jax, r_pil, t_pil in rows:
    lines.append(f"| {view} | {r_jax:,.0f} | {t_jax * 1e3:.1f} | {r_pil:,.0f} | "
                 f"{t_pil * 1e3:.1f} | {r_jax / r_pil:.2f}x |")
  lines += [
      "",
      "Pillow runs one image at a time on one core; a PyTorch loader would use several "
      "worker processes (scaling roughly with cores). XLA CPU may use every core the "
      "process is allowed (see above). On a shared CPU, timings vary by ~20-50% run "
      "to run.",
  ]
  text = "\n".join(lines) + "\n"
  print(text)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if args.append and out.exists():
    text = out.read_text(encoding="utf-8") + "\n" + text
  out.write_text(text, encoding="utf-8")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
