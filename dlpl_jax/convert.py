"""``python -m dlpl_jax.convert``: the ``dlpl-convert`` command,
:mod:`dlpl_jax.tools.convert`."""

import sys

from dlpl_jax.tools.convert import main

if __name__ == "__main__":
  sys.exit(main())
