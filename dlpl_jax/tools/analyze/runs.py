"""Reading a run folder: :func:`load_run` and the eval records it holds.

Only files are read (``metrics.jsonl``, ``config.json``, ``summary.json``,
``class_features.npz``), so a finished or a still-running run can be read and TensorFlow
is never imported. Missing files and a torn last line of metrics.jsonl are tolerated
(a running job writes them). Run files that cannot be read or do not agree raise
:class:`~dlpl_jax.errors.UsageError`: a metrics.jsonl that is not UTF-8 text, a
config.json that is not a JSON object, a step that is not an integer, a confusion matrix
that is not ``[C, C]`` for the run's C classes or holds negative or non-finite counts.
A run without any evaluation yet has nothing to plot: :func:`nothing_to_plot` says so
in one line, and when the first evaluation comes (``eval_every``).

Both metric formats are read: eval records that hold the derived pseudo-label
statistics and ``marginal`` themselves (older runs), and eval records with the
confusion matrices only, whose window's statistics and ``marginal`` are in the train
record of the same step. The statistics are recomputed from the confusion matrices
(:func:`dlpl_jax.training.metrics.pseudo_label_stats`); an undefined value
(``null``/NaN, e.g. the accuracy of a window without confident pseudo-labels) is a gap,
never a 0 (:func:`dlpl_jax.tools.analyze.stats.window_stat`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from dlpl_jax.data import datasets
from dlpl_jax.errors import UsageError
from dlpl_jax.training import metrics as metrics_lib

# The keys of an eval record's confusion matrices: all pseudo-labels, confident ones.
ALL, MASKED = "pseudo/confusion", "pseudo_masked/confusion"


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
  confusion matrices when present (:func:`dlpl_jax.training.metrics.pseudo_label_stats`,
  exactly how both formats computed them), else taken from the train record;
  ``marginal`` comes from the eval record, else from that train record."""
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


def class_names(config: dict, num_classes: int) -> list[str]:
  """The run's class names (:func:`dlpl_jax.data.datasets.class_names` of config.json's
  ``dataset``, with its ``data_dir`` when that is a folder): CIFAR-10 names; else
  ``label.labels.txt`` of a prepared TFDS copy; else ``"0", "1", ...``."""
  data_dir = config.get("data_dir") or None  # "" or a .npz file: TFDS's own data dir
  if not (isinstance(data_dir, str) and os.path.isdir(data_dir)):
    data_dir = None
  return datasets.class_names(str(config.get("dataset", "")), num_classes, data_dir)


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
