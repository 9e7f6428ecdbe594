"""``python -m dlpl_jax.compact_data``: the ``dlpl-compact-data`` command,
:mod:`dlpl_jax.tools.compact_data`."""

import sys

from dlpl_jax.tools.compact_data import main

if __name__ == "__main__":
  sys.exit(main())
