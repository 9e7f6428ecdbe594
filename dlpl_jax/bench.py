"""``python -m dlpl_jax.bench``: the ``dlpl-bench`` command,
:mod:`dlpl_jax.tools.bench`."""

import sys

from dlpl_jax.tools.bench import main

if __name__ == "__main__":
  sys.exit(main())
