"""``python -m dlpl_jax.tools.analyze``: the ``dlpl-analyze`` command (:mod:`.cli`)."""

import sys

from dlpl_jax.tools.analyze.cli import main

if __name__ == "__main__":
  sys.exit(main())
