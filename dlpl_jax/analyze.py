"""``python -m dlpl_jax.analyze``: the ``dlpl-analyze`` command,
:mod:`dlpl_jax.tools.analyze`."""

import sys

from dlpl_jax.tools.analyze import main

if __name__ == "__main__":
  sys.exit(main())
