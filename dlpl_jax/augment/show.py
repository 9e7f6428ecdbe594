"""Visual check: a PNG grid of real CIFAR-10 test images and their weak and strong views.

CLI: ``python -m dlpl_jax.augment --show [--out PATH] [--n 8] [--seed 0]
[--data_dir DIR]`` writes a PNG grid of real CIFAR-10 test images (rows: original, weak,
3 strong views), by default to ``runs/augment_views.png`` (not committed). The README's
figure is regenerated only on request: ``--show --out
experiments/results/augment_views.png``.

The images are read by TensorFlow Datasets from ``--data_dir``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's own rule); the grid is drawn
by matplotlib. Both are imported only when the command runs, and this module only by
``python -m dlpl_jax.augment`` (``import dlpl_jax.augment`` does not import it).
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

from dlpl_jax import errors
from dlpl_jax.augment.views import strong
from dlpl_jax.augment.views import weak
from dlpl_jax.data.datasets import tfds_data_dir
from dlpl_jax.errors import UsageError

# The command's --help description (the package's one-line summary).
_DESCRIPTION = "FixMatch's weak and strong views as pure, jit-compiled JAX functions."

# ----------------------------------------------------------------------------------
# Visual check.

def show(images, key, out_path, n_strong: int = 3) -> pathlib.Path:
  """Writes a PNG grid: rows = original, weak view, ``n_strong`` strong views.

  Args:
    images: ``[N, H, W, 3]`` uint8 (or float in [0, 255]).
    key: JAX PRNG key.
    out_path: PNG path (parent folders are created).
    n_strong: number of strong-view rows.

  Returns:
    The path written.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  images = np.asarray(images)
  n = images.shape[0]
  keys = jax.random.split(key, 1 + n_strong)
  rows = [("original", images.astype(np.float32)),
          ("weak", np.asarray(weak(keys[0], images)))]
  rows += [(f"strong #{i + 1}", np.asarray(strong(keys[1 + i], images)))
           for i in range(n_strong)]
  fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.9, 1.3 * len(rows)),
                           squeeze=False)
  for r, (label, views) in enumerate(rows):
    for i in range(n):
      ax = axes[r][i]
      ax.imshow(np.clip(views[i], 0, 255).astype(np.uint8), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(label, fontsize=9)
  fig.suptitle("FixMatch views (dlpl_jax.augment): weak = flip + reflect-pad crop; "
               "strong = weak + RandAugment(2) + Cutout", fontsize=8)
  fig.tight_layout()
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


MAX_SHOW = 64  # columns of the --show grid


def _load_cifar_test(n: int, data_dir: str) -> np.ndarray:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if not tfds.builder("cifar10", data_dir=data_dir).is_prepared():
    raise UsageError(f"cifar10 is not prepared under {data_dir} (set TFDS_DATA_DIR or "
                     "--data_dir to the folder that holds cifar10/)")
  ds = tfds.load("cifar10", split=f"test[:{n}]", batch_size=-1, download=False,
                 data_dir=data_dir)
  return tfds.as_numpy(ds)["image"]


def main(argv=None) -> None:
  parser = errors.ArgumentParser(prog="python -m dlpl_jax.augment",
                                 description=_DESCRIPTION)
  parser.add_argument("--show", action="store_true",
                      help="write a PNG grid of weak/strong views of CIFAR-10 test images")
  parser.add_argument("--out", default="runs/augment_views.png",
                      help="PNG path (default runs/augment_views.png, not committed; the "
                           "README's figure: --out experiments/results/augment_views.png)")
  parser.add_argument("--n", type=int, default=8,
                      help=f"number of images (columns), 1 to {MAX_SHOW}")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: $TFDS_DATA_DIR, else "
                           "~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  if not args.show:
    parser.print_help()
    return
  if not 1 <= args.n <= MAX_SHOW:
    parser.error(f"--n must be in [1, {MAX_SHOW}], got {args.n}")
  if pathlib.Path(args.out).suffix.lower() != ".png":
    parser.error(f"--out must be a .png path, got {args.out!r}")
  data_dir = tfds_data_dir(args.data_dir)

  def command():
    errors.require("analyze", "matplotlib")
    errors.require("train", "tensorflow_datasets")
    errors.require("tensorflow", "tensorflow")
    errors.check_output(args.out)
    images = _load_cifar_test(args.n, data_dir)
    print(f"wrote {show(images, jax.random.key(args.seed), args.out)}")

  status = errors.run_command(command, paths=(args.out,))
  if status:
    sys.exit(status)


if __name__ == "__main__":
  main()
