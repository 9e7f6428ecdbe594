"""``python -m dlpl_jax.zeroshot``: the ``dlpl-zeroshot`` command,
:mod:`dlpl_jax.tools.zeroshot`."""

import sys

from dlpl_jax.tools.zeroshot import main

if __name__ == "__main__":
  sys.exit(main())
