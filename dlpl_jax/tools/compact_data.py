"""``dlpl-compact-data``: writes the compact, lossless, TensorFlow-free copy of a prepared
TFDS image dataset (:mod:`dlpl_jax.data.compact`) and checks that it reads back exactly.

  dlpl-compact-data --out data/cifar10_compact.npz [--dataset cifar10] [--splits train,test]

TensorFlow is needed for this step only (it reads the TFDS copy once). Every argument and
``--out`` are checked before anything is read; an error is one line starting
``[dlpl_jax] error:`` (exit status 2 for bad input).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from dlpl_jax import errors
from dlpl_jax.data.compact import SUFFIX, is_compact, quant_tables, read, write
from dlpl_jax.errors import UsageError




def split_specs(text: str) -> list[tuple[str, str]]:
  """``(name, TFDS split spec)`` of each comma-separated part of ``--splits``.

  >>> split_specs("train[:1000], test")
  [('train', 'train[:1000]'), ('test', 'test')]

  Raises:
    UsageError: an empty part, or a split named twice.
  """
  specs = [part.strip() for part in text.split(",")]
  if any(not spec or not spec.split("[")[0].strip() for spec in specs):
    raise UsageError(f"--splits must be comma-separated TFDS splits such as "
                     f"'train,test' or 'train[:1000],test', got {text!r}")
  names = [spec.split("[")[0].strip() for spec in specs]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise UsageError(f"--splits names {twice[0]!r} twice: {text!r}")
  return list(zip(names, specs))


def _load_split(dataset: str, spec: str, data_dir: str | None):
  """``dlpl_jax.data.tfds.load_split`` with its refusals as one-line :class:`UsageError`:
  a dataset that is not prepared, an unknown split, TensorFlow absent."""
  from dlpl_jax.data import tfds  # pylint: disable=import-outside-toplevel
  try:
    return tfds.load_split(dataset, spec, data_dir)
  except UsageError:
    raise
  except FileNotFoundError as e:  # the dataset is not prepared there
    raise UsageError(str(e)) from None
  except ValueError as e:  # TFDS: an unknown split or a bad slice
    raise UsageError(f"--splits {spec!r}: {str(e).splitlines()[0]}") from None


def main(argv=None) -> int:
  p = errors.ArgumentParser(
      prog="dlpl-compact-data",
      description="Write a compact, lossless, TensorFlow-free copy of a prepared TFDS "
                  "image dataset (train and test splits) and check it.")
  p.add_argument("--out", required=True, help="the .npz file to write")
  p.add_argument("--dataset", default="cifar10")
  p.add_argument("--data_dir", default=None, help="TFDS data directory (default: "
                 "$TFDS_DATA_DIR, else ~/tensorflow_datasets)")
  p.add_argument("--quality", type=int, default=75,
                 help="JPEG quality of the quantization tables (75 matches the copy)")
  p.add_argument("--splits", default="train,test",
                 help="comma-separated TFDS splits, e.g. 'train[:1000],test[:500]'")
  args = p.parse_args(argv)
  if not is_compact(args.out):
    p.error(f"--out must end in {SUFFIX}, got {args.out!r}")
  return errors.run_command(lambda: _command(args), paths=(args.out, args.data_dir))


def _command(args) -> None:
  """The command's work, every argument checked before the (slow) reading and coding."""
  quant_tables(args.quality)
  specs = split_specs(args.splits)
  errors.check_output(args.out, "--out")
  errors.require("train", "tensorflow_datasets")
  errors.require("tensorflow", "tensorflow")
  from dlpl_jax import host  # pylint: disable=import-outside-toplevel
  host.configure()
  splits = {}
  for name, spec in specs:
    t = time.time()
    splits[name] = _load_split(args.dataset, spec, args.data_dir)
    print(f"read {spec}: {splits[name][0].shape} in {time.time() - t:.1f}s", flush=True)
  t = time.time()
  meta = write(args.out, splits, args.dataset, args.quality,
               log=lambda msg: print(msg, flush=True))
  print(f"wrote {args.out}: {os.path.getsize(args.out):,} bytes "
        f"({os.path.getsize(args.out) / 2**20:.2f} MiB) in {time.time() - t:.0f}s; "
        + "; ".join(f"{k}: coef {v['bytes']['coef']:,} + residual "
                    f"{v['bytes']['residual']:,} bytes"
                    for k, v in meta["splits"].items()))
  t = time.time()
  back = read(args.out, tuple(splits))
  for k, (images, labels) in splits.items():
    same = np.array_equal(back[k][0], images) and np.array_equal(back[k][1], labels)
    if not same:
      raise errors.RunError(f"{args.out}: split {k!r} read back differs")
  print(f"read back with numpy alone in {time.time() - t:.1f}s: every split identical "
        "to the TFDS copy (pixels and labels)")


if __name__ == "__main__":
  sys.exit(main())
