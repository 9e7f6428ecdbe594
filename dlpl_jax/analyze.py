"""Plots and a markdown report of pseudo-label bias from one or two run folders.

Command line (``make analyze WORKDIR=runs/x [ARGS="runs/y"]``)::

  python -m dlpl_jax.analyze WORKDIR [WORKDIR2] [--out DIR] [--last-frac 0.25]

writes ``report.md`` and PNGs into ``--out`` (default ``WORKDIR/analysis``, or
``WORKDIR/analysis_vs_<basename of WORKDIR2>`` for two runs). It reads only files
(``metrics.jsonl``, ``config.json``, ``summary.json``, ``class_features.npz``), so it
works on a finished or a still-running run and never imports TensorFlow. A run without
any evaluation yet has nothing to plot: one line on stderr says so and when the first
evaluation comes (``eval_every``), nothing is written, and the exit status is 1. Bad
input exits with 2, in one line and before anything is written: a missing workdir, run
files that cannot be read or do not agree (a metrics.jsonl that is not UTF-8 text, a
config.json that is not a JSON object, a step that is not an integer, a confusion matrix
that is not ``[C, C]`` for the run's C classes or holds negative or non-finite counts),
an output folder that cannot be written. Every such line starts ``[dlpl_jax] error:``.

Both metric formats are read: eval records that hold the derived pseudo-label
statistics and ``marginal`` themselves (older runs), and eval records with the
confusion matrices only, whose window's statistics and ``marginal`` are in the train
record of the same step. The statistics are recomputed from the confusion matrices
(:func:`dlpl_jax.metrics.pseudo_label_stats`); an undefined value (``null``/NaN, e.g.
the accuracy of a window without confident pseudo-labels) is a gap, never a 0.

Panels (one run, or the two runs side by side; each figure's title names the run(s)):

* ``a_proportions.png`` -- a: each class's share of the pseudo-labels in each eval
  window (column sums of ``pseudo/confusion``), dashed 1/C (the paper's Figure 1);
  a2: the same for the confident (masked) pseudo-labels.
* ``b_confusion.png`` -- the row-normalised pseudo-label confusion matrix on the
  unlabeled set, summed over the last ``last_frac`` of the eval windows; each row is
  labelled with its number of unlabeled images ``n``.
* ``c_precision_recall.png`` -- per-class pseudo-label precision and recall against the
  class's share of the pseudo-labels (same windows as b).
* ``d_similarity.png`` -- cosine similarity of the EMA model's class-mean penultimate
  features (``class_features.npz``, last eval); the similarity rows of the most and
  least pseudo-labelled classes (bars from 0, axis up to 1); each class's mean
  similarity to the others against its pseudo-label share.
* ``curves.png`` -- test top-1, pseudo-label imbalance (max/min count) and KL to
  uniform per eval window.

Notebooks can call the pieces: :func:`load_run`, :func:`proportions`,
:func:`window_confusion`, :func:`window_stat`, :func:`plot_proportions`,
:func:`plot_confusion`, :func:`plot_precision_recall`, :func:`plot_similarity`,
:func:`plot_similarity_rows`, :func:`plot_curves` (each draws on a given Matplotlib
``ax``) and :func:`analyze`.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from dlpl_jax import errors
from dlpl_jax import metrics as metrics_lib
from dlpl_jax.errors import UsageError

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")
ALL, MASKED = "pseudo/confusion", "pseudo_masked/confusion"
# Beyond this many classes: no per-class legend/annotations, only extremes highlighted.
_MANY = 12


# --------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Run:
  """What a workdir holds, read from files (any of them may be missing)."""
  workdir: str
  config: dict
  summary: dict | None
  records: list[dict]               # every metrics.jsonl record, in file order
  evals: list[dict]                 # kind == "eval", sorted by step, one per step
  features: dict | None             # class_features.npz: step, class_means, per_class_acc
  class_names: list[str]

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))

  @property
  def method(self) -> str:
    return str(self.config.get("method", "?"))

  @property
  def label(self) -> str:
    """``"method (workdir basename)"``, or the basename alone without a config.json."""
    return f"{self.method} ({self.name})" if "method" in self.config else self.name

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _read_json(path: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _matrix(r: dict, key: str) -> np.ndarray | None:
  """``r[key]`` as a float64 ``[C, C]`` array, or None (missing, null or not square)."""
  v = r.get(key)
  if v is None:
    return None
  try:
    m = np.asarray(v, np.float64)
  except (TypeError, ValueError):
    return None
  return m if m.ndim == 2 and m.shape[0] == m.shape[1] and m.shape[0] > 0 else None


def _num(v: Any) -> float:
  """A metric value as a float; NaN for null, a missing key or a non-number."""
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def _complete(ev: dict, train: dict | None) -> dict:
  """One eval record with the window's derived pseudo-label statistics, for both metric
  formats. The old format stored them (and ``marginal``) in the eval record; the new one
  stores only the confusion matrices there and writes the statistics and ``marginal`` in
  the train record of the same step. The statistics are recomputed here from the
  confusion matrices when present (:func:`dlpl_jax.metrics.pseudo_label_stats`, exactly
  how both formats computed them), else taken from the train record; ``marginal`` comes
  from the eval record, else from that train record."""
  out = dict(ev)
  for prefix, key in (("pseudo", ALL), ("pseudo_masked", MASKED)):
    conf = _matrix(ev, key)
    if conf is not None:
      out.update(metrics_lib.pseudo_label_stats(conf, prefix))
    elif train is not None:
      for name in ("counts", "imbalance", "kl_uniform", "kl_true", "acc"):
        k = f"{prefix}/{name}"
        if out.get(k) is None and train.get(k) is not None:
          out[k] = train[k]
  if out.get("marginal") is None and train is not None and train.get("marginal") is not None:
    out["marginal"] = train["marginal"]
  return out


def eval_records(records: Sequence[dict]) -> list[dict]:
  """The ``kind == "eval"`` records sorted by step (the last one wins for a repeated step,
  e.g. after a resume), each completed with its window's statistics (pseudo-label
  counts, imbalance, KL to uniform, accuracy) and ``marginal``, whichever metric format
  wrote them (see :func:`_complete`)."""
  by_step, train = {}, {}
  for r in records:
    if not isinstance(r, dict) or "step" not in r:
      continue
    if r.get("kind") == "eval":
      by_step[r["step"]] = r
    elif r.get("kind") == "train":
      train[r["step"]] = r
  return [_complete(by_step[s], train.get(s)) for s in sorted(by_step)]


def window_stat(r: dict, prefix: str, name: str) -> float:
  """``{prefix}/{name}`` of an eval record (``prefix`` "pseudo" or "pseudo_masked",
  ``name`` "acc", "imbalance", "kl_uniform" or "kl_true"); NaN when undefined: null,
  missing (e.g. written before ``kl_true`` existed: then recomputed from the confusion
  matrix where the record has one), or a
  window without (confident) pseudo-labels."""
  counts = r.get(f"{prefix}/counts")
  try:
    if counts is not None and sum(counts) == 0:
      return float("nan")
  except TypeError:
    pass
  return _num(r.get(f"{prefix}/{name}"))


def class_names(config: dict, num_classes: int) -> list[str]:
  """CIFAR-10 names; else ``label.labels.txt`` of the TFDS dataset when found; else
  ``"0", "1", ...``."""
  dataset = str(config.get("dataset", ""))
  if dataset == "cifar10" and num_classes == 10:
    return list(CIFAR10_NAMES)
  roots = [os.environ.get("TFDS_DATA_DIR", ""),
           os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
               os.path.abspath(__file__)))), "shared", "tensorflow_datasets")]
  for root in roots:
    if not (root and dataset):
      continue
    for path in sorted(glob.glob(os.path.join(root, dataset, "*", "label.labels.txt"))):
      with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
      if len(names) == num_classes:
        return names
  return [str(i) for i in range(num_classes)]


def _num_classes(config: dict, evals: Sequence[dict], features: dict | None) -> int:
  for r in evals:
    for key in (ALL, MASKED):
      if _matrix(r, key) is not None:
        return len(r[key])
  if config.get("num_classes"):
    return int(config["num_classes"])
  if features is not None:
    return int(np.asarray(features["class_means"]).shape[0])
  return 0


def _read_config(path: str) -> dict:
  """config.json as a dict ({} when missing or unparseable, e.g. half-written).

  Raises:
    UsageError: it holds JSON other than an object, or a ``num_classes`` /
      ``total_steps`` that is not a positive integer.
  """
  config = _read_json(path)
  if config is None:
    return {}
  if not isinstance(config, dict):
    raise UsageError(f"{path} holds a JSON {type(config).__name__}, not an object of "
                     "config values")
  for key in ("num_classes", "total_steps"):
    v = config.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise UsageError(f"{path}: {key} is {v!r}, not a positive integer")
  return config


def _read_records(path: str) -> list[dict]:
  """The records of a metrics.jsonl ([] when missing; a torn last line is ignored).

  Raises:
    UsageError: the file is unreadable or not UTF-8 text, or a record's ``step`` is not
      an integer.
  """
  if not os.path.exists(path):
    return []
  try:
    with open(path, "rb") as f:
      data = f.read()
    text = data.decode("utf-8")  # the trainer writes ASCII JSON: anything else is damage
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise UsageError(f"{path}, line {line}: byte 0x{data[e.start]:02x} is not UTF-8 "
                     "text; not a metrics.jsonl written by dlpl_jax") from None
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
  records = metrics_lib.parse_jsonl(text.splitlines(keepends=True))
  for r in records:
    step = r.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int):
      raise UsageError(f"{path}: a record of kind {r.get('kind')!r} has step {step!r}; "
                       "steps are integers")
  return records


def _class_count(config: dict, evals: Sequence[dict]) -> tuple[int, str]:
  """The run's number of classes and where it comes from: config.json's
  ``num_classes``, else the size of the first square confusion matrix (0: neither)."""
  if config.get("num_classes"):
    return config["num_classes"], "num_classes in config.json"
  for r in evals:
    for key in (ALL, MASKED):
      m = _matrix(r, key)
      if m is not None:
        return len(m), f"the size of its first confusion matrix, at step {r['step']}"
  return 0, "no square confusion matrix"


def _check_confusions(path: str, evals: Sequence[dict], c: int, source: str) -> None:
  """Every confusion matrix of ``evals`` is ``[c, c]`` of finite counts >= 0.

  Raises:
    UsageError: naming the step and key of the first that is not.
  """
  for r in evals:
    for key in (ALL, MASKED):
      if r.get(key) is None:
        continue
      where = f"{path}: step {r['step']}: {key}"
      try:
        m = np.asarray(r[key], np.float64)
      except (TypeError, ValueError):
        raise UsageError(f"{where} is not a matrix of numbers") from None
      if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise UsageError(f"{where} has shape {list(m.shape)}, not [C, C]")
      if m.shape[0] != c:
        raise UsageError(f"{where} is {m.shape[0]}x{m.shape[0]}, but the run has {c} "
                         f"classes ({source})")
      bad = np.argwhere(~np.isfinite(m) | (m < 0))
      if bad.size:
        i, j = bad[0]
        raise UsageError(f"{where} holds {m[i, j]:g} at [{i}, {j}]; counts are finite "
                         "and >= 0")


def load_run(workdir: str) -> Run:
  """Reads a (finished or running) workdir; tolerates a torn last line of metrics.jsonl
  and missing files.

  Raises:
    FileNotFoundError: ``workdir`` is not a folder.
    UsageError: its files cannot be read or do not agree: a metrics.jsonl that is not
      UTF-8 text, a step that is not an integer, a config.json that is not a JSON object,
      a confusion matrix that is not ``[C, C]`` for the run's C classes (config.json's
      ``num_classes``, else the first matrix's size) or holds negative or non-finite
      counts.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no such workdir: {workdir}" + (
        " (a file, not a run folder)" if os.path.exists(workdir) else ""))
  config = _read_config(os.path.join(workdir, "config.json"))
  summary = _read_json(os.path.join(workdir, "summary.json"))
  summary = summary if isinstance(summary, dict) else None
  path = os.path.join(workdir, "metrics.jsonl")
  records = _read_records(path)
  evals = eval_records(records)
  _check_confusions(path, evals, *_class_count(config, evals))
  features = None
  fpath = os.path.join(workdir, "class_features.npz")
  if os.path.exists(fpath):
    try:
      with np.load(fpath) as z:
        features = {k: z[k] for k in z.files}
      if "class_means" not in features:
        features = None
    except Exception:  # pylint: disable=broad-except  (half-written by a running job)
      features = None
  c = _num_classes(config, evals, features)
  return Run(workdir, config, summary, records, evals, features, class_names(config, c))


class NothingToPlotError(RuntimeError):
  """A run folder without any evaluation yet: there is nothing to plot."""


def nothing_to_plot(run: Run) -> str | None:
  """None when ``run`` has an evaluation; else one line saying that there is nothing to
  plot yet, how many steps have been logged and at which step the first evaluation is
  written (``eval_every`` and ``total_steps`` of config.json, when present)."""
  if run.evals:
    return None
  last = 0
  if not os.path.exists(os.path.join(run.workdir, "metrics.jsonl")):
    so_far = "no metrics.jsonl yet"
  elif not run.records:
    so_far = "metrics.jsonl is empty"
  else:
    last = max((r["step"] for r in run.records if isinstance(r.get("step"), int)), default=0)
    so_far = f"{last} step{'' if last == 1 else 's'} logged so far"
  every, total = run.config.get("eval_every"), run.config.get("total_steps")
  first = None
  if isinstance(every, int) and every > 0:
    if isinstance(total, int) and 0 < total < every:
      first, when = total, f"at step {total} (total_steps, before eval_every = {every})"
    else:
      first, when = every, f"at step {every} (eval_every)"
  else:
    when = "at step eval_every of the run's config" + (
        "" if run.config else " (no config.json yet)")
  if first is not None and last >= first:
    # The run is past its first evaluation, but the record is not in the file: a torn
    # or damaged line, or the evaluation at that step is still being written.
    return (f"{run.workdir}: nothing to plot yet, no evaluation in metrics.jsonl "
            f"({so_far}), although the first is written at step {first}: its line is "
            "still being written, or torn or damaged (a resume of the run rewrites it)")
  return (f"{run.workdir}: nothing to plot yet, no evaluation in metrics.jsonl ({so_far}); "
          f"the first evaluation is written {when}")


# ------------------------------------------------------------------------ statistics


def proportions(evals: Sequence[dict], key: str = ALL) -> tuple[np.ndarray, np.ndarray]:
  """Per-eval-window pseudo-label class proportions.

  Args:
    evals: eval records (sorted by step).
    key: ``"pseudo/confusion"`` (all pseudo-labels) or ``"pseudo_masked/confusion"``.

  Returns:
    ``steps [E]`` and ``props [E, C]``: column sums of the window's confusion matrix over
    its total (a NaN row for a window without pseudo-labels). Records without ``key``
    are skipped.

  Examples:
    >>> steps, p = proportions([{"step": 5, "pseudo/confusion": [[2, 1], [0, 1]]}])
    >>> steps.tolist(), p.tolist()
    ([5], [[0.5, 0.5]])
  """
  steps, props = [], []
  for r in evals:
    conf = _matrix(r, key)
    if conf is None:
      continue
    counts = conf.sum(axis=0)
    total = counts.sum()
    steps.append(r["step"])
    props.append(counts / total if total > 0 else np.full_like(counts, np.nan))
  if not props:
    return np.zeros((0,), np.int64), np.zeros((0, 0))
  return np.asarray(steps), np.stack(props)


def true_shares(evals: Sequence[dict]) -> np.ndarray | None:
  """The true class shares ``[C]`` of the unlabeled images the run drew (row sums of all
  windows' ``pseudo/confusion``), or None without confusion matrices."""
  mats = [m for m in (_matrix(r, ALL) for r in evals) if m is not None]
  if not mats:
    return None
  rows = np.sum(mats, axis=0).sum(axis=1)
  return rows / rows.sum() if rows.sum() > 0 else None


def skewed(evals: Sequence[dict]) -> bool:
  """Whether the run's unlabeled images are not balanced (long-tailed data): the most
  frequent true class above 1.5x the least, over at least 200 images per class (so that
  sampling noise of a balanced set does not count)."""
  mats = [m for m in (_matrix(r, ALL) for r in evals) if m is not None]
  if not mats:
    return False
  rows = np.sum(mats, axis=0).sum(axis=1)
  return bool(rows.sum() >= 200 * len(rows) and rows.max() > 1.5 * rows.min())


def window_confusion(evals: Sequence[dict], key: str = ALL, last_frac: float = 0.25
                     ) -> tuple[np.ndarray | None, str]:
  """Sums the confusion matrices of the last ``ceil(last_frac * E)`` (at least one) eval
  windows. Returns ``(matrix [C, C] or None, description)``, e.g. "steps 750-1000 (last 2
  of 8 eval windows)"."""
  rs = [r for r in evals if _matrix(r, key) is not None]
  if not rs:
    return None, "no eval windows"
  n = max(1, math.ceil(last_frac * len(rs)))
  picked = rs[-n:]
  conf = np.sum([_matrix(r, key) for r in picked], axis=0)
  start = rs[-n - 1]["step"] if len(rs) > n else 0
  return conf, (f"steps {start}-{picked[-1]['step']} "
                f"(last {n} of {len(rs)} eval window{'s' if len(rs) > 1 else ''})")


def cosine_similarity(class_means: np.ndarray) -> np.ndarray:
  """``[C, C]`` cosine similarity of the rows of ``class_means [C, D]``."""
  x = np.asarray(class_means, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return x @ x.T


def extremes(conf: np.ndarray) -> tuple[int, float, int, float]:
  """``(most, share, least, share)``: the most and least pseudo-labelled classes of a
  confusion matrix and their shares of its pseudo-labels."""
  counts = np.asarray(conf, np.float64).sum(axis=0)
  p = counts / max(counts.sum(), 1e-12)
  hi, lo = int(np.argmax(counts)), int(np.argmin(counts))
  return hi, float(p[hi]), lo, float(p[lo])


# -------------------------------------------------------------------------- plotting


def _colors(c: int):
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  if c <= 10:
    return [colormaps["tab10"](i) for i in range(c)]
  if c <= 20:
    return [colormaps["tab20"](i) for i in range(c)]
  return [colormaps["turbo"](i / max(c - 1, 1)) for i in range(c)]


def _empty(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True,
          fontsize=10, color="0.3")
  # Not set_xticks([]): that would also empty the ticks of axes shared with this one.
  ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def plot_proportions(records: Sequence[dict], ax, key: str = ALL,
                     names: Sequence[str] | None = None, title: str | None = None,
                     legend: bool = True) -> None:
  """Panel a: each class's share of the pseudo-labels per eval window, dashed 1/C; for
  a run whose unlabeled data are not balanced (:func:`skewed`), each class's TRUE share
  of the unlabeled images instead, dashed in the class's colour (the target an unbiased
  pseudo-labeler meets).

  ``records``: metrics.jsonl records (eval records are picked out). With more than
  ``_MANY`` classes the lines are grey and the 3 most and least predicted classes (last
  window) are coloured.
  """
  evals = eval_records(records)
  steps, props = proportions(evals, key)
  truth = true_shares(evals) if skewed(evals) else None
  kind = "confident (masked)" if key == MASKED else "all"
  ax.set_title(title or f"pseudo-label class proportions, {kind}", fontsize=10)
  if props.size == 0:
    _empty(ax, f"no eval records with {key}")
    return
  c = props.shape[1]
  names = list(names) if names is not None else [str(i) for i in range(c)]
  marker = "o" if len(steps) <= 25 else None
  if np.isnan(props).all():  # no line to draw, hence none in the legend
    pass
  elif c <= _MANY:
    for k, col in enumerate(_colors(c)):
      ax.plot(steps, props[:, k], color=col, marker=marker, ms=3, lw=1.4, label=names[k])
      if truth is not None and truth.shape == (c,):
        ax.axhline(truth[k], color=col, ls="--", lw=0.9)
  else:
    last = props[~np.isnan(props).any(axis=1)]
    last = last[-1] if len(last) else np.zeros(c)
    order = np.argsort(-last)
    hl = list(order[:3]) + list(order[-3:])
    for k in range(c):
      if k not in hl:
        ax.plot(steps, props[:, k], color="0.75", lw=0.6)
    for k, col in zip(hl, _colors(10)[:3] + _colors(10)[7:10]):
      ax.plot(steps, props[:, k], color=col, marker=marker, ms=3, lw=1.4, label=names[k])
  if truth is not None and truth.shape == (c,) and c <= _MANY:
    ax.plot([], [], color="0.4", ls="--", lw=0.9, label="true share\n(unlabeled set)")
  else:
    ax.axhline(1.0 / c, color="k", ls="--", lw=1, label="1/C")
  if np.isnan(props).all():
    ax.text(0.5, 0.5, f"no {kind} pseudo-labels yet", ha="center", va="center",
            transform=ax.transAxes, fontsize=10, color="0.3")
  ax.set_xlabel("training step (end of eval window)")
  ax.set_ylabel("share of pseudo-labels")
  ax.set_ylim(bottom=0)
  ax.set_ylim(bottom=-0.02 * ax.get_ylim()[1])  # a class never predicted stays visible
  if len(steps) == 1:
    ax.set_xlim(steps[0] * 0.5, steps[0] * 1.5 + 1)
  ax.grid(alpha=0.3)
  if legend:
    ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0)


def _label_points(ax, xs, ys, names, colors, which, markers=()) -> None:
  """Labels points ``which`` without overlapping labels: points closer than ~2% of the
  axes share one label ("bird, deer, dog"), and each label takes the first of a few
  offsets around its point where it overlaps no label placed before it and none of the
  ``markers`` (``(x, y)`` pairs of arrays, data coordinates)."""
  fig = ax.figure
  try:
    fig.draw_without_rendering()  # run the layout so that pixel positions are final
    renderer = fig.canvas.get_renderer()
  except AttributeError:  # a canvas without a renderer: plain offsets
    renderer = None
  x0, x1 = ax.get_xlim()
  y0, y1 = ax.get_ylim()
  tol_x, tol_y = 0.02 * (x1 - x0), 0.03 * (y1 - y0)
  groups: list[list[int]] = []
  for k in sorted(which, key=lambda k: (xs[k], ys[k])):
    if not (np.isfinite(xs[k]) and np.isfinite(ys[k])):
      continue
    for g in groups:
      if abs(xs[k] - xs[g[0]]) < tol_x and abs(ys[k] - ys[g[0]]) < tol_y:
        g.append(k)
        break
    else:
      groups.append([k])
  offsets = [((dx, dy), "left" if dx > 0 else "right")
             for dy in (3, -10, 12, -19, 21, -28) for dx in (4, -4)]
  placed = []
  axbox = ax.get_window_extent(renderer) if renderer is not None else None
  if renderer is not None:
    from matplotlib.transforms import Bbox  # pylint: disable=g-import-not-at-top
    for mx, my in markers:
      pts = np.column_stack([np.asarray(mx, float), np.asarray(my, float)])
      for px, py in ax.transData.transform(pts[np.isfinite(pts).all(axis=1)]):
        placed.append(Bbox([[px - 3, py - 3], [px + 3, py + 3]]))
  for g in groups:
    text = ", ".join(names[k] for k in g)
    color = colors[g[0]] if len(g) == 1 else "0.2"
    def put(off, ha):
      ann = ax.annotate(text, (xs[g[0]], ys[g[0]]), xytext=off, textcoords="offset points",
                        fontsize=7, color=color, ha=ha, annotation_clip=False)
      ann.set_in_layout(False)
      return ann
    if renderer is None:
      put(*offsets[0])
      continue
    best = None  # (number of overlaps, offset) of the least bad inside place
    for off, ha in offsets:
      ann = put(off, ha)
      box = ann.get_window_extent(renderer).padded(1)
      ann.remove()
      inside = (box.x0 >= axbox.x0 and box.x1 <= axbox.x1 and box.y0 >= axbox.y0 and
                box.y1 <= axbox.y1)
      hits = sum(box.overlaps(b) for b in placed)
      if inside and (best is None or hits < best[0]):
        best = (hits, (off, ha))
      if inside and not hits:
        break
    off_ha = best[1] if best is not None else offsets[0]
    placed.append(put(*off_ha).get_window_extent(renderer).padded(1))


def _confusion_panel(ax, conf, names, title: str):
  """Titles a panel drawn from a confusion matrix; returns ``(conf [C, C] float64, C,
  names)``, or None after marking the panel empty when there are no pseudo-labels."""
  ax.set_title(title, fontsize=10)
  if conf is None or np.asarray(conf).sum() == 0:
    _empty(ax, "no pseudo-labels in these windows")
    return None
  conf = np.asarray(conf, np.float64)
  c = conf.shape[0]
  return conf, c, list(names) if names is not None else [str(i) for i in range(c)]


def plot_confusion(conf: np.ndarray | None, ax, names: Sequence[str] | None = None,
                   title: str = "pseudo-label confusion (row-normalised)",
                   colorbar: bool = True) -> None:
  """Panel b: row-normalised confusion heatmap (rows = true class, labelled with their
  number of unlabeled images ``n``; columns = pseudo-label), values annotated when
  C <= 10."""
  panel = _confusion_panel(ax, conf, names, title)
  if panel is None:
    return
  conf, c, names = panel
  with np.errstate(invalid="ignore", divide="ignore"):
    norm = conf / conf.sum(axis=1, keepdims=True)
  norm = np.nan_to_num(norm)
  im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  rows = conf.sum(axis=1)
  _class_ticks(ax, names, y=False)
  _class_ticks(ax, [f"{name} (n={n:.0f})" for name, n in zip(names, rows)], x=False)
  ax.set_xlabel("pseudo-label")
  ax.set_ylabel("true class (n: its unlabeled images)")
  if c > 20:
    ax.set_ylabel(f"true class (unlabeled image), n = {rows.min():.0f}..{rows.max():.0f} "
                  "images per class")
  if c <= 10:
    for i in range(c):
      for j in range(c):
        ax.text(j, i, f"{norm[i, j]:.2f}".lstrip("0") if norm[i, j] < 1 else "1",
                ha="center", va="center", fontsize=7,
                color="white" if norm[i, j] > 0.55 else "black")
  if colorbar:
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _class_ticks(ax, names: Sequence[str], x: bool = True, y: bool = True) -> None:
  c = len(names)
  step = 1 if c <= 20 else int(math.ceil(c / 10))
  idx = list(range(0, c, step))
  if x:
    ax.set_xticks(idx)
    ax.set_xticklabels([names[i] for i in idx] if c <= 20 else idx, rotation=90 if c <= 20
                       else 0, fontsize=7)
  if y:
    ax.set_yticks(idx)
    ax.set_yticklabels([names[i] for i in idx] if c <= 20 else idx, fontsize=7)


def plot_precision_recall(conf: np.ndarray | None, ax, names: Sequence[str] | None = None,
                          title: str = "pseudo-label precision / recall") -> None:
  """Panel c: per-class precision (circle) and recall (triangle) of pseudo-labels
  against the class's share of the pseudo-labels; the two marks of a class are joined,
  labelled with the class name; dashed 1/C."""
  panel = _confusion_panel(ax, conf, names, title)
  if panel is None:
    return
  conf, c, names = panel
  precision, recall = metrics_lib.per_class_precision_recall(conf)
  share = conf.sum(axis=0) / conf.sum()
  cols = _colors(c)
  order = np.argsort(-share)
  labelled = set(range(c)) if c <= 20 else set(order[:5]) | set(order[-5:])
  for k in range(c):
    ax.plot([share[k]] * 2, [precision[k], recall[k]], color=cols[k], lw=0.8, alpha=0.6)
  ax.scatter(share, precision, c=cols, marker="o", s=30, label="precision",
             edgecolors="k", linewidths=0.4)
  ax.scatter(share, recall, c=cols, marker="^", s=34, label="recall", edgecolors="k",
             linewidths=0.4)
  top = np.nan_to_num(np.fmax(precision, recall))
  ax.axvline(1.0 / c, color="k", ls="--", lw=1)
  ax.set_xlabel("share of pseudo-labels (dashed: 1/C)")
  ax.set_ylabel("precision (o) / recall (^)")
  ax.set_ylim(-0.06, 1.16)
  right = max(float(np.nanmax(share)) * 1.25, 1.5 / c)
  ax.set_xlim(-0.05 * right, right)  # a margin: classes never predicted sit at x = 0
  _label_points(ax, share, top, names, cols, sorted(labelled),
                markers=[(share, precision), (share, recall)])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")


def plot_similarity(class_means: np.ndarray | None, ax, names: Sequence[str] | None = None,
                    title: str = "cosine similarity of class-mean features",
                    colorbar: bool = True) -> None:
  """Panel d: heatmap of the cosine similarity of class-mean penultimate features."""
  ax.set_title(title, fontsize=10)
  if class_means is None:
    _empty(ax, "no class_features.npz")
    return
  sim = cosine_similarity(class_means)
  c = sim.shape[0]
  names = list(names) if names is not None else [str(i) for i in range(c)]
  off = sim[~np.eye(c, dtype=bool)]
  lo = float(off.min()) if off.size else 0.0
  im = ax.imshow(sim, cmap="viridis", vmin=min(lo, 0.99), vmax=1.0)
  _class_ticks(ax, names)
  if c <= 10:
    for i in range(c):
      for j in range(c):
        ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="white" if sim[i, j] < lo + 0.6 * (1 - lo) else "black")
  if colorbar:
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_similarity_rows(class_means: np.ndarray | None, conf: np.ndarray | None, ax,
                         names: Sequence[str] | None = None, title: str | None = None
                         ) -> None:
  """Panel d, bars: the similarity of the most and of the least pseudo-labelled class
  (by ``conf``'s column sums) to every other class, with their mean in the legend.

  The bars start at 0 (at the lowest value when some are negative) and the axis ends at
  1, the largest cosine similarity: a truncated axis would make classes whose features
  are all alike (similarities 0.97-0.99, early in training) look very different."""
  ax.set_title(title or "similarity to the other classes", fontsize=10)
  if class_means is None or conf is None or np.asarray(conf).sum() == 0:
    _empty(ax, "no class_features.npz" if class_means is None else "no pseudo-labels")
    return
  sim = cosine_similarity(class_means)
  c = sim.shape[0]
  names = list(names) if names is not None else [str(i) for i in range(c)]
  hi, p_hi, lo, p_lo = extremes(conf)
  # Many classes: the other classes sorted by their similarity to the most predicted one.
  order = np.arange(c) if c <= 20 else np.argsort(-np.nan_to_num(sim[hi], nan=-2.0))
  x = np.arange(c)
  w = 0.4 if c <= 20 else 0.5
  for off, k, p, col, what in ((-w / 2, hi, p_hi, "tab:red", "most"),
                               (w / 2, lo, p_lo, "tab:blue", "least")):
    row = sim[k].copy()
    others = np.delete(row, k)
    row[k] = np.nan
    ax.bar(x + off, row[order], width=w, color=col,
           label=f"{what} predicted:\n{names[k]} ({100 * p:.1f}%),\n"
                 f"mean {np.mean(others):.2f}")
  if c <= 20:
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
  else:
    ax.set_xticks([])
    ax.set_xlabel(f"classes, by similarity to {names[hi]}")
  vals = np.delete(np.concatenate([sim[hi], sim[lo]]), [hi, c + lo])
  low = float(np.nanmin(vals)) if vals.size and np.isfinite(vals).any() else 0.0
  ax.set_ylim(max(min(0.0, low - 0.05), -1.0), 1.0)
  ax.set_ylabel("cosine similarity")
  ax.grid(alpha=0.3, axis="y")
  # Outside the axes: the bars may reach the top of the axis.
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
            handlelength=1.0)


def plot_similarity_vs_share(class_means: np.ndarray | None, conf: np.ndarray | None, ax,
                             names: Sequence[str] | None = None,
                             title: str = "mean similarity vs pseudo-label share") -> None:
  """Panel d, scatter: each class's mean cosine similarity to the other classes against
  its share of the pseudo-labels (with the Pearson correlation in the title)."""
  if class_means is None or conf is None or np.asarray(conf).sum() == 0:
    ax.set_title(title, fontsize=10)
    _empty(ax, "no class_features.npz" if class_means is None else "no pseudo-labels")
    return
  sim = cosine_similarity(class_means)
  c = sim.shape[0]
  names = list(names) if names is not None else [str(i) for i in range(c)]
  mean_sim = (sim.sum(axis=1) - np.diag(sim)) / max(c - 1, 1)
  conf = np.asarray(conf, np.float64)
  share = conf.sum(axis=0) / conf.sum()
  cols = _colors(c)
  ax.scatter(mean_sim, share, c=cols, s=30, edgecolors="k", linewidths=0.4)
  ax.axhline(1.0 / c, color="k", ls="--", lw=1)
  order = np.argsort(-share)
  shown = range(c) if c <= 20 else sorted(set(order[:5]) | set(order[-5:]))
  ax.margins(x=0.15, y=0.12)
  x0, x1 = ax.get_xlim()
  ax.set_xlim(x0, min(x1, max(1.0, float(np.nanmax(mean_sim)))))  # cosine <= 1
  _label_points(ax, mean_sim, share, names, cols, shown, markers=[(mean_sim, share)])
  r = np.corrcoef(mean_sim, share)[0, 1] if c > 2 and np.std(mean_sim) > 0 and np.std(
      share) > 0 else float("nan")
  ax.set_title(f"{title} (r = {r:.2f})", fontsize=10)
  ax.set_xlabel("mean cosine similarity to the other classes")
  ax.set_ylabel("share of pseudo-labels")
  ax.grid(alpha=0.3)


def plot_curves(runs: Sequence[Run], axes) -> None:
  """Test top-1, pseudo-label imbalance (log scale) and KL(pseudo-labels || uniform) per
  eval, for each run; solid = all pseudo-labels, dotted = confident ones. When a run's
  unlabeled data are not balanced (:func:`skewed`), the KL panel shows KL(pseudo-labels
  || true class shares of the same images) instead: uniform is not the target. A window
  without (confident) pseudo-labels or with a null value is a gap, not a 0; a series
  without any value is neither drawn nor in the legend."""
  ax_top, ax_imb, ax_kl = axes
  colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
  kl_name = "kl_true" if any(skewed(run.evals) for run in runs) else "kl_uniform"

  def draw(ax, steps, ys, **kw) -> None:
    ys = np.asarray(ys, np.float64)
    if np.isfinite(ys).any():
      ax.plot(steps, ys, **kw)

  for run, col in zip(runs, colors):
    ev = run.evals
    if not ev:
      continue
    steps = [r["step"] for r in ev]
    mk = "o" if len(ev) <= 25 else None
    draw(ax_top, steps, [_num(r.get("eval/top1")) for r in ev], color=col, marker=mk, ms=3,
         label=run.label)
    for prefix, ls in (("pseudo", "-"), ("pseudo_masked", ":")):
      tag = "all" if prefix == "pseudo" else "confident"
      draw(ax_imb, steps, [window_stat(r, prefix, "imbalance") for r in ev], color=col,
           ls=ls, marker=mk, ms=3, label=f"{run.label}, {tag}")
      draw(ax_kl, steps, [window_stat(r, prefix, kl_name) for r in ev], color=col,
           ls=ls, marker=mk, ms=3, label=f"{run.label}, {tag}")
  ax_top.set_title("EMA model test top-1", fontsize=10)
  ax_top.set_ylabel("top-1 (%)")
  ax_imb.set_title("pseudo-label imbalance (max/min count)", fontsize=10)
  imb = [window_stat(r, p, "imbalance") for run in runs for r in run.evals
         for p in ("pseudo", "pseudo_masked")]
  imb = [v for v in imb if math.isfinite(v)]
  if imb and max(imb) > 20:  # an (almost) absent class: ratios in the hundreds
    ax_imb.set_yscale("log")
    from matplotlib import ticker  # pylint: disable=g-import-not-at-top
    ax_imb.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_imb.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax_kl.set_title("KL(pseudo-labels || true class shares)" if kl_name == "kl_true"
                  else "KL(pseudo-labels || uniform)", fontsize=10)
  ax_kl.set_ylabel("nats")
  for ax in axes:
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    if ax.get_lines():
      if ax is ax_imb:
        ax.axhline(1.0, color="k", ls="--", lw=1)  # balanced; not a legend entry
      ax.legend(fontsize=7)
    else:
      _empty(ax, "no values yet")


# ------------------------------------------------------------------ figures, report


def _figure(nrows: int, ncols: int, w: float, h: float, **kw):
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
  FigureCanvasAgg(fig)  # no pyplot and no global backend change
  axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
  return fig, axes


def _save(fig, out_dir: str, name: str, written: list[str], runs: Sequence[Run]) -> None:
  """Saves ``fig`` as ``out_dir/name`` under a title naming the run(s)."""
  fig.suptitle(" vs ".join(r.label for r in runs), fontsize=11)
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=110)
  written.append(path)


def _features(run: Run) -> np.ndarray | None:
  if run.features is None:
    return None
  m = np.asarray(run.features["class_means"])
  return m if m.ndim == 2 and m.shape[0] == run.num_classes else None


def _fmt(x: Any, pattern: str = "{:.2f}") -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  return pattern.format(x)


def _run_facts(run: Run, last_frac: float) -> dict[str, str]:
  """The report's rows for one run (the same keys for every run, so two runs share a
  table; a missing value is "–")."""
  ev = run.evals
  total = run.config.get("total_steps")
  last_step = max([r.get("step", 0) for r in run.records], default=0)
  status = ("finished" if total and ev and ev[-1]["step"] >= int(total)
            else "running or interrupted")
  top1 = [v for v in (_num(r.get("eval/top1")) for r in ev) if math.isfinite(v)]
  last = ev[-1] if ev else {}
  names = [f"class {x}" if x.isdigit() else x for x in run.class_names]
  facts = {
      "workdir": f"`{run.workdir}`",
      "method": run.method,
      "dataset": f"{run.config.get('dataset', '?')} ({run.num_classes} classes)",
      "steps": f"{last_step} / {total if total else '?'} ({status})",
      "evals": f"{len(ev)}" + (f" (last at step {ev[-1]['step']})" if ev else ""),
      "final test top-1": _fmt(top1[-1] if top1 else None, "{:.2f}%"),
      "median test top-1 of the last 20 evals":
          _fmt(float(np.median(top1[-20:])) if top1 else None, "{:.2f}%")
          + (f" (of {len(top1)})" if 0 < len(top1) < 20 else ""),
  }
  if ev:
    start = ev[-2]["step"] if len(ev) > 1 else 0
    facts["last eval window"] = f"steps {start}-{last['step']}"

    def stat(name: str, pattern: str) -> str:  # "–": undefined (e.g. no confident labels)
      return " / ".join(_fmt(window_stat(last, prefix, name), pattern)
                        for prefix in ("pseudo", "pseudo_masked"))

    facts["pseudo-label acc, all / confident (last window)"] = stat("acc", "{:.3f}")
    facts["imbalance max/min count, all / confident (last window)"] = stat(
        "imbalance", "{:.1f}")
    facts["KL to uniform (nats), all / confident (last window)"] = stat(
        "kl_uniform", "{:.3f}")
    facts["KL to the true class shares of the same images (nats), all / confident (last "
          "window)"] = stat("kl_true", "{:.3f}")
    marginal = np.asarray([_num(v) for v in (last.get("marginal") or [])])
    if marginal.size == run.num_classes and np.isfinite(marginal).all():
      hi, lo = int(np.argmax(marginal)), int(np.argmin(marginal))
      facts["running marginal of the pseudo-labels, max / min (last eval)"] = (
          f"{names[hi]} {100 * marginal[hi]:.1f}% / {names[lo]} {100 * marginal[lo]:.1f}%")
  for key, tag in ((ALL, "all"), (MASKED, "confident")):
    conf, desc = window_confusion(ev, key, last_frac)
    if conf is None:
      continue
    if key == ALL:
      facts["windows of panels b-d"] = desc
    if conf.sum() == 0:
      continue
    hi, p_hi, lo, p_lo = extremes(conf)
    facts[f"most / least predicted, {tag} (panels b-d windows)"] = (
        f"{names[hi]} {100 * p_hi:.1f}% / {names[lo]} {100 * p_lo:.1f}% "
        f"(uniform {100 / len(names):.1f}%)")
    if key == ALL:
      true = conf.sum(axis=1) / conf.sum()
      # Flag a skewed unlabeled set (long-tailed runs), not the sampling noise of a few
      # hundred images.
      if conf.sum() >= 200 * len(names) and true.max() > 1.5 * true.min():
        facts["true classes of the unlabeled images (panels b-d windows)"] = (
            f"not balanced: {names[int(np.argmax(true))]} {100 * true.max():.1f}% ... "
            f"{names[int(np.argmin(true))]} {100 * true.min():.1f}%")
  return facts


def _report(runs: Sequence[Run], pngs: list[str], notes: list[str], out_dir: str,
            last_frac: float) -> str:
  facts = [_run_facts(r, last_frac) for r in runs]
  lines = ["# Pseudo-label analysis", ""]
  if len(runs) == 1:
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts[0].items()]
  else:
    keys = list(dict.fromkeys(k for f in facts for k in f))
    lines += ["| | " + " | ".join(r.label for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    lines += [f"| {k} | " + " | ".join(f.get(k, "–") for f in facts) + " |" for k in keys]
  lines += ["", "Pseudo-label windows: each eval record's confusion counts the unlabeled "
            "images pseudo-labelled since the previous eval (rows = true class, columns = "
            "pseudo-label); panels b-d sum the last "
            f"{100 * last_frac:.0f}% of the windows.", ""]
  if notes:
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
  lines += ["## Figures", ""]
  for p in pngs:
    rel = os.path.relpath(p, out_dir)
    lines += [f"- [{rel}]({rel})", "", f"  ![{rel}]({rel})", ""]
  return "\n".join(lines)


def analyze(workdirs: Sequence[str], out_dir: str | None = None,
            last_frac: float = 0.25) -> list[str]:
  """Writes the PNGs and ``report.md`` for one run or two runs side by side.

  Args:
    workdirs: one or two run folders.
    out_dir: output folder; default ``WORKDIR/analysis`` or
      ``WORKDIR/analysis_vs_<basename of WORKDIR2>``.
    last_frac: fraction of the eval windows (the last ones, at least one) that panels
      b-d sum.

  Returns:
    The written paths (PNGs, then report.md).

  Raises:
    FileNotFoundError: a workdir does not exist.
    UsageError: a run's files cannot be read or do not agree (:func:`load_run`), or
      ``out_dir`` cannot be written (nothing is written).
    NothingToPlotError: a run has no evaluation yet (nothing is written).
  """
  if not 1 <= len(workdirs) <= 2:
    raise ValueError(f"give one or two workdirs, got {len(workdirs)}")
  runs = [load_run(w) for w in workdirs]
  flag = "--out"
  if out_dir is None:
    out_dir = os.path.join(workdirs[0], "analysis" if len(runs) == 1 else
                           "analysis_vs_" + runs[1].name)
    flag = "the output folder"
  errors.check_output(out_dir, flag, folder=True)
  for r in runs:
    why = nothing_to_plot(r)
    if why is not None:
      raise NothingToPlotError(why)
  os.makedirs(out_dir, exist_ok=True)
  written: list[str] = []
  notes: list[str] = []
  n = len(runs)
  for r in runs:
    if _features(r) is None:
      notes.append(f"{r.label}: no usable class_features.npz; the similarity panel (d) "
                   "is skipped.")
    elif r.features is not None and "step" in r.features:
      notes.append(f"{r.label}: class-mean features from the eval at step "
                   f"{int(r.features['step'])} (EMA model, test set).")
  if n == 2 and runs[0].num_classes != runs[1].num_classes:
    notes.append("the two runs have different numbers of classes.")

  def title(r: Run, what: str) -> str:
    return f"{r.label}\n{what}" if n == 2 else what

  # a, a2: proportions, rows = all/confident, columns = runs, shared y.
  fig, axes = _figure(2, n, 6.2 if n == 1 else 5.6, 3.4, sharey="row", sharex="col")
  for j, r in enumerate(runs):
    for i, key in enumerate((ALL, MASKED)):
      tag = "all pseudo-labels" if key == ALL else "confident pseudo-labels (mask = 1)"
      plot_proportions(r.records, axes[i, j], key, r.class_names,
                       title=title(r, f"({'a' if i == 0 else 'a2'}) class shares, {tag}"),
                       legend=(j == n - 1))
      if j > 0 and proportions(r.evals, key)[1].size:  # shared y, but labelled, in case
        axes[i, j].tick_params(labelleft=True)            # the other panel is empty
  _save(fig, out_dir, "a_proportions.png", written, runs)

  windows = [window_confusion(r.evals, ALL, last_frac) for r in runs]
  side = 5.2 if max(r.num_classes for r in runs) <= 10 else 6.0
  # b: confusion.
  fig, axes = _figure(1, n, side, side * 1.08)
  for j, (r, (conf, desc)) in enumerate(zip(runs, windows)):
    plot_confusion(conf, axes[0, j], r.class_names,
                   title=title(r, f"(b) pseudo-label confusion, row-normalised\n{desc}"))
  _save(fig, out_dir, "b_confusion.png", written, runs)

  # c: precision / recall vs share.
  fig, axes = _figure(1, n, 5.4, 4.4, sharey=True)
  for j, (r, (conf, desc)) in enumerate(zip(runs, windows)):
    plot_precision_recall(conf, axes[0, j], r.class_names,
                          title=title(r, f"(c) pseudo-label precision / recall\n{desc}"))
  _save(fig, out_dir, "c_precision_recall.png", written, runs)

  # d: similarity heatmap, bars of the extremes, mean similarity vs share.
  fig, axes = _figure(n, 3, 5.0, 4.6)
  for i, (r, (conf, desc)) in enumerate(zip(runs, windows)):
    feats = _features(r)
    step = (f", step {int(r.features['step'])}" if feats is not None and
            "step" in r.features else "")
    plot_similarity(feats, axes[i, 0], r.class_names,
                    title=title(r, f"(d) cosine similarity, class-mean features{step}"))
    plot_similarity_rows(feats, conf, axes[i, 1], r.class_names,
                         title=title(r, f"most vs least pseudo-labelled class\n{desc}"))
    plot_similarity_vs_share(feats, conf, axes[i, 2], r.class_names,
                             title=title(r, "mean similarity vs share"))
  _save(fig, out_dir, "d_similarity.png", written, runs)

  # Curves: top-1, imbalance, KL.
  fig, axes = _figure(1, 3, 4.8, 3.6)
  plot_curves(runs, axes[0])
  _save(fig, out_dir, "curves.png", written, runs)

  report = os.path.join(out_dir, "report.md")
  with open(report, "w", encoding="utf-8") as f:
    f.write(_report(runs, list(written), notes, out_dir, last_frac))
  written.append(report)
  return written


def main(argv: Sequence[str] | None = None) -> int:
  p = errors.ArgumentParser(
      prog="python -m dlpl_jax.analyze", description=__doc__.split("\n\n")[0],
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


if __name__ == "__main__":
  sys.exit(main())
