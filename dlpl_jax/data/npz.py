"""Reading ``.npz`` archives of arrays without pickle, with one-line errors."""

from __future__ import annotations


import numpy as np

from dlpl_jax.errors import UsageError, one_line


def npz_reason(e: BaseException) -> str:
  """Why ``np.load(path, allow_pickle=False)``, or reading one of its arrays, raised
  ``e``, as the end of a sentence that starts with the path; for a file that is no
  archive, without numpy's hint to allow pickle.

  >>> npz_reason(ValueError("This file contains pickled (object) data."))
  'is not a valid .npz of arrays (not a zip archive of .npy files)'
  """
  if isinstance(e, FileNotFoundError):
    return "does not exist"
  if isinstance(e, OSError) and e.errno is not None:
    return f"cannot be read ({e.strerror or e})"
  if isinstance(e, ValueError) and "Object arrays" in str(e):
    return ("holds an array of Python objects, which is not read (pickle); save numeric "
            "arrays")
  if isinstance(e, ValueError) and "pickle" in str(e):
    return "is not a valid .npz of arrays (not a zip archive of .npy files)"
  return (f"is not a valid .npz of arrays (truncated or damaged: {type(e).__name__}: "
          f"{one_line(e)[:100]})")


def read_npz(path) -> dict:
  """Every array of an .npz archive, read without pickle.

  Returns:
    ``{name: np.ndarray}``.

  Raises:
    UsageError: one line naming ``path``: absent or unreadable, not an .npz archive
      (garbage, a single .npy array, truncated or damaged), or holding object arrays.
  """
  try:
    z = np.load(path, allow_pickle=False)
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
  except Exception as e:  # pylint: disable=broad-except  (zip, pickle, EOF)
    raise UsageError(f"{path} {npz_reason(e)}") from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise UsageError(f"{path} is not a valid .npz of arrays (a single .npy array; "
                     "write an archive with np.savez)")
  try:
    with z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # pylint: disable=broad-except  (zip CRC, zlib, object arrays)
    raise UsageError(f"{path} {npz_reason(e)}") from None
  other = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
  if other:  # a zip member without the .npy suffix reads as bytes
    raise UsageError(f"{path} is not a valid .npz of arrays (member {other[0]!r} is not "
                     "an .npy array)")
  return arrays
