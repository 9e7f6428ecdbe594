"""Host set-up shared by every entry point (``make`` or ``python -m``): the XLA:CPU flag
and TensorFlow's log level. Imports neither JAX nor TensorFlow, and must run before the
JAX backend starts (XLA reads ``XLA_FLAGS`` when it creates the backend). Where the data
is follows TFDS's own rule (``--config.data_dir``, else ``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``); nothing here looks for it.
"""

from __future__ import annotations

import importlib.metadata
import os

# XLA:CPU convolutions through Eigen instead of YNNPACK, whose kernel gradients are slow:
# halves the CPU train step with jaxlib 0.10.2 (docs/performance.md). XLA aborts on a
# flag it does not know, so it is set only for that jaxlib and only without a GPU/TPU
# plugin; an XLA_FLAGS already in the environment (even empty) is left alone.
CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
CPU_FLAG_JAXLIB = "0.10.2"
_ACCELERATOR_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "libtpu-nightly")


def _installed(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def configure(environ=os.environ) -> dict[str, str]:
  """Sets ``XLA_FLAGS`` and TensorFlow's log level where they are unset; returns what
  it set."""
  out = {}
  cpu_only = (environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu") and
              not any(_installed(p) for p in _ACCELERATOR_PLUGINS))
  if "XLA_FLAGS" not in environ and cpu_only and _installed("jaxlib") == CPU_FLAG_JAXLIB:
    out["XLA_FLAGS"] = CPU_FLAG
  # TensorFlow only reads data here: keep its start-up chatter (and oneDNN's notice,
  # which TF_CPP_MIN_LOG_LEVEL does not silence) out of the run's output.
  for key, value in (("TF_CPP_MIN_LOG_LEVEL", "2"), ("TF_ENABLE_ONEDNN_OPTS", "0")):
    if key not in environ:
      out[key] = value
  environ.update(out)
  return out
