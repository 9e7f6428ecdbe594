"""Plots and a markdown report of pseudo-label bias from one or two run folders.

Command line (``dlpl-analyze``, ``python -m dlpl_jax.analyze``, or
``make analyze WORKDIR=runs/x [ARGS="runs/y"]``)::

  dlpl-analyze WORKDIR [WORKDIR2] [--out DIR] [--last-frac 0.25]

writes ``report.md`` and PNGs into ``--out`` (default ``WORKDIR/analysis``, or
``WORKDIR/analysis_vs_<basename of WORKDIR2>`` for two runs); see
:func:`dlpl_jax.tools.analyze.report.analyze`. It reads only files, so it works on a
finished or a still-running run and never imports TensorFlow. A run without any
evaluation yet has nothing to plot: one line on stderr says so and when the first
evaluation comes (``eval_every``), nothing is written, and the exit status is 1. Bad
input exits with 2, in one line and before anything is written: a missing workdir, run
files that cannot be read or do not agree (:func:`dlpl_jax.tools.analyze.runs.load_run`),
an output folder that cannot be written. Every such line starts ``[dlpl_jax] error:``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from dlpl_jax import errors
from dlpl_jax.errors import UsageError
from dlpl_jax.tools.analyze.report import analyze
from dlpl_jax.tools.analyze.runs import NothingToPlotError


def main(argv: Sequence[str] | None = None) -> int:
  p = errors.ArgumentParser(
      prog="dlpl-analyze", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="exit status: 0 written; 1 nothing to plot yet (no evaluation in a run); "
             "2 bad input (no such workdir, run files unreadable or inconsistent, an "
             "output folder that cannot be written)")
  p.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="one run, or two to compare")
  p.add_argument("--out", default=None, help="output folder (default WORKDIR/analysis or "
                 "WORKDIR/analysis_vs_<name of WORKDIR2>)")
  p.add_argument("--last-frac", type=float, default=0.25,
                 help="fraction of the last eval windows that panels b-d sum (default 0.25)")
  args = p.parse_args(argv)
  if len(args.workdirs) > 2:
    p.error("give one or two workdirs")
  if not 0 < args.last_frac <= 1:
    p.error("--last-frac must be in (0, 1]")

  def command():
    errors.require("analyze", "matplotlib")
    try:
      paths = analyze(args.workdirs, args.out, args.last_frac)
    except FileNotFoundError as e:
      if e.errno is not None:  # an OSError of the filesystem: run_command's
        raise
      raise UsageError(str(e)) from None  # no such workdir
    except NothingToPlotError as e:
      return errors.report(e, errors.RunError.exit_code)
    for path in paths:
      print(path)
    return 0

  return errors.run_command(command, paths=(*args.workdirs, args.out))
