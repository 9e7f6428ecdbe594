"""``dlpl-analyze``: plots and a markdown report of pseudo-label bias from one or two run
folders (:mod:`~dlpl_jax.tools.analyze.cli`).

One job per module, each importing only the ones before it:

* :mod:`~dlpl_jax.tools.analyze.runs` -- reading a run folder (:func:`load_run`,
  :func:`eval_records`, :func:`nothing_to_plot`);
* :mod:`~dlpl_jax.tools.analyze.stats` -- the numbers drawn from its eval records
  (:func:`proportions`, :func:`window_confusion`, :func:`window_stat`, ...);
* :mod:`~dlpl_jax.tools.analyze.plots` -- the Matplotlib panels, each drawn on a given
  ``ax`` (:func:`plot_proportions`, :func:`plot_confusion`,
  :func:`plot_precision_recall`, :func:`plot_similarity`, :func:`plot_similarity_rows`,
  :func:`plot_similarity_vs_share`, :func:`plot_curves`);
* :mod:`~dlpl_jax.tools.analyze.report` -- the PNGs and ``report.md`` (:func:`analyze`);
* :mod:`~dlpl_jax.tools.analyze.cli` -- the command line (:func:`main`).

Notebooks call the pieces from here (``from dlpl_jax.tools import analyze``). Importing
the package needs neither Matplotlib (imported where a panel is drawn) nor TensorFlow.
"""

from dlpl_jax.tools.analyze.runs import (ALL, MASKED, NothingToPlotError, Run,
                                         class_names, eval_records, load_run,
                                         nothing_to_plot)
from dlpl_jax.tools.analyze.stats import (cosine_similarity, extremes, proportions,
                                          skewed, true_shares, window_confusion,
                                          window_stat)
from dlpl_jax.tools.analyze.plots import (plot_confusion, plot_curves,
                                          plot_precision_recall, plot_proportions,
                                          plot_similarity, plot_similarity_rows,
                                          plot_similarity_vs_share)
from dlpl_jax.tools.analyze.report import analyze
from dlpl_jax.tools.analyze.cli import main

__all__ = [
    "ALL", "MASKED", "NothingToPlotError", "Run", "class_names", "eval_records",
    "load_run", "nothing_to_plot",
    "cosine_similarity", "extremes", "proportions", "skewed", "true_shares",
    "window_confusion", "window_stat",
    "plot_confusion", "plot_curves", "plot_precision_recall", "plot_proportions",
    "plot_similarity", "plot_similarity_rows", "plot_similarity_vs_share",
    "analyze", "main",
]
