"""Zero-shot (CLIP) pseudo-labels debiased without any training, and the command.

Inputs are read by :mod:`dlpl_jax.data.clip_labels` (the official CSV pair, or an
``.npz`` of logits, and the split by confidence).

Training-free debiasing (:func:`debias_set`, and the command): the class marginal
is estimated on the set itself, ``p̂ = mean_i softmax(z_i)``, and the predictions are
logit-adjusted with :func:`dlpl_jax.pseudo_label.debias`:
``q_i = softmax(z_i - τ log p̂)``. The command::

  python -m dlpl_jax.zeroshot --logits preds.npz [--tau 0.4[,1.0,...]] [--out DIR]
      [--split_threshold 0.95] [--top_k_per_class K]

prints top-1 before and after (when ``labels`` are given), the per-class predicted
share before and after (max/min ratio, classes never predicted, KL to uniform and,
with labels, to the true label share), and writes to ``--out``: ``summary.json``
(strict JSON: an undefined value, e.g. the KL to a true share of 0, is null),
``zeroshot_bias.png`` (per-class precision and recall against the predicted share,
before and after, the paper's figure; the sorted shares without labels), and the
confidence split in the official CSV form (``pseudo_labeled.csv``,
``unlabeled.csv``, from the debiased predictions at the first ``τ``). ``τ = 0.4``
is the default, the value of every released DebiasPL script (the zero-shot one
included); this project has no measured zero-shot figure that would pick another.
Every argument is checked before anything is read or written; an error is one line
starting ``[dlpl_jax] error:``, with exit status 2 for bad input.

References:
  Wang et al., DebiasPL, CVPR 2022, https://arxiv.org/abs/2201.01490 (Sec. 4.3,
  zero-shot learning with CLIP).
  Radford et al., CLIP, ICML 2021, https://arxiv.org/abs/2103.00020.
  Menon et al., Long-tail learning via logit adjustment, ICLR 2021,
  https://arxiv.org/abs/2007.07314.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import NamedTuple

import numpy as np

from dlpl_jax import errors
from dlpl_jax.data import clip_labels
from dlpl_jax.data.clip_labels import DEFAULT_SPLIT_THRESHOLD, chunks
from dlpl_jax.training import metrics as metrics_lib
from dlpl_jax.errors import UsageError



DEFAULT_TAU = 0.4
























def set_marginal(logits: np.ndarray) -> np.ndarray:
  """The class marginal of a whole set: ``mean_i softmax(z_i)``, ``[C]`` float32.

  Computed in chunks as the exact running mean, with
  :func:`dlpl_jax.pseudo_label.update_marginal` at momentum ``n_seen / (n_seen +
  n_chunk)``.

  Args:
    logits: ``[N, C]`` logits.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from dlpl_jax import pseudo_label  # pylint: disable=import-outside-toplevel
  n, c = logits.shape
  marginal = np.full(c, 1.0 / c, np.float32)
  seen = 0
  for s in chunks(n):
    probs = jax.nn.softmax(np.asarray(logits[s], np.float32), axis=-1)
    m = seen / (seen + probs.shape[0])
    marginal = pseudo_label.update_marginal(marginal, probs, m)
    seen += probs.shape[0]
  return np.asarray(marginal, np.float32)


class Debiased(NamedTuple):
  """What :func:`debias_set` returns.

  Attributes:
    pseudo_labels: ``[N]`` int32 argmax of the debiased distribution.
    confidence: ``[N]`` float32 its max.
    marginal: ``[C]`` float32 the set's marginal that was removed.
  """
  pseudo_labels: np.ndarray
  confidence: np.ndarray
  marginal: np.ndarray


def debias_set(logits: np.ndarray, tau: float = DEFAULT_TAU,
               marginal: np.ndarray | None = None) -> Debiased:
  """Debiased pseudo-labels of a whole set, without training.

  ``q_i = softmax(z_i - tau * log p̂)`` by :func:`dlpl_jax.pseudo_label.debias`,
  with ``p̂`` the set's own marginal (:func:`set_marginal`) unless given.

  Args:
    logits: ``[N, C]`` zero-shot logits.
    tau: debiasing strength, finite and ``>= 0`` (0: CLIP's own predictions).
    marginal: ``[C]`` marginal to remove; default: estimated on ``logits``.

  Returns:
    A :class:`Debiased` ``(pseudo_labels, confidence, marginal)``.
  """
  from dlpl_jax import pseudo_label  # pylint: disable=import-outside-toplevel
  logits = np.asarray(logits)
  if marginal is None:
    marginal = set_marginal(logits)
  pred = np.empty(len(logits), np.int32)
  conf = np.empty(len(logits), np.float32)
  for s in chunks(len(logits)):
    q = np.asarray(pseudo_label.debias(np.asarray(logits[s], np.float32), marginal, tau))
    pred[s], conf[s] = q.argmax(-1), q.max(-1)
  return Debiased(pred, conf, np.asarray(marginal, np.float32))










def share_stats(pred: np.ndarray, num_classes: int,
                labels: np.ndarray | None = None) -> dict:
  """Per-class predicted share and how far it is from uniform (and the truth).

  Args:
    pred: ``[N]`` predicted class ids.
    num_classes: C.
    labels: optional ``[N]`` ground truth.

  Returns:
    A dict: ``share`` ``[C]`` list, ``max_min_ratio`` (None when a class is never
    predicted), ``never_predicted``, ``kl_to_uniform``, and with labels
    ``kl_to_true_share``, ``top1``, ``precision`` / ``recall`` ``[C]`` lists (None
    for a class never predicted / absent).
  """
  n = len(pred)
  count = np.bincount(pred, minlength=num_classes).astype(np.float64)
  share = count / n
  nz = share > 0
  out = {
      "share": share.tolist(),
      "max_min_ratio": float(share.max() / share.min()) if nz.all() else None,
      "never_predicted": int((~nz).sum()),
      "kl_to_uniform": float(np.sum(share[nz] * np.log(share[nz] * num_classes))),
  }
  if labels is not None:
    true = np.bincount(labels, minlength=num_classes).astype(np.float64) / n
    bad = nz & (true == 0)
    out["kl_to_true_share"] = (math.inf if bad.any() else
                               float(np.sum(share[nz] * np.log(share[nz] / true[nz]))))
    hit = pred == labels
    out["top1"] = float(hit.mean())
    tp = np.bincount(labels[hit], minlength=num_classes).astype(np.float64)
    true_count = true * n
    out["precision"] = [float(t / c) if c else None for t, c in zip(tp, count)]
    out["recall"] = [float(t / c) if c else None for t, c in zip(tp, true_count)]
  return out


def _plot(path, before, after, tau, num_classes):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rel = lambda s: np.asarray(s) * num_classes  # noqa: E731
  if "precision" in before:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("precision", "recall")):
      for stats, name, color in ((before, "zero-shot", "tab:gray"),
                                 (after, f"debiased, τ = {tau:g}", "tab:blue")):
        v = np.array([np.nan if x is None else x for x in stats[key]])
        x = rel(stats["share"])
        ok = (x > 0) & np.isfinite(v)
        ax.scatter(x[ok], v[ok], s=8, alpha=0.6, color=color, label=name)
      ax.set_xscale("log")
      ax.axvline(1.0, color="k", lw=0.5, ls=":")
      ax.set_xlabel("predicted share of the class × C (1 = uniform)")
      ax.set_ylabel(f"per-class {key}")
      ax.legend(loc="best", fontsize=8)
    axes[0].set_title("precision vs predicted share")
    axes[1].set_title("recall vs predicted share")
  else:
    fig, ax = plt.subplots(figsize=(6, 4))
    for stats, name, color in ((before, "zero-shot", "tab:gray"),
                               (after, f"debiased, τ = {tau:g}", "tab:blue")):
      ax.plot(np.sort(rel(stats["share"]))[::-1], color=color, label=name)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("class, sorted by predicted share")
    ax.set_ylabel("predicted share × C (1 = uniform)")
    ax.set_title("predicted share per class (no labels given)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _ratio(r):
  return "inf" if r is None else f"{r:.1f}"


def _line(name, s):
  text = (f"{name}: share max/min {_ratio(s['max_min_ratio'])}, never predicted "
          f"{s['never_predicted']}, KL to uniform {s['kl_to_uniform']:.4f}")
  if "top1" in s:
    text = (f"{name}: top-1 {100 * s['top1']:.2f}%, " + text.split(": ", 1)[1]
            + f", KL to true share {s['kl_to_true_share']:.4f}")
  return text


def _taus(text):
  try:
    taus = [float(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise UsageError(f"--tau must be numbers separated by commas, got {text!r}") from None
  if not taus or any(not (math.isfinite(t) and t >= 0) for t in taus):
    raise UsageError(f"--tau values must be finite and >= 0, got {text!r}")
  return taus


def run(logits_path: str, taus=(DEFAULT_TAU,), out: str | None = None,
        split_threshold: float | None = DEFAULT_SPLIT_THRESHOLD,
        top_k_per_class: int | None = None, log=print) -> dict:
  """The command's work: read, debias at each tau, report, write ``out``.

  Every argument is checked before anything is read or computed, and ``out`` is created
  only then.

  Returns:
    The summary dict (also ``out/summary.json`` when ``out`` is given: strict JSON, an
    undefined value such as the KL to a true share of 0 written as null).

  Raises:
    UsageError: a bad ``tau``, split rule or input file, or an ``out`` that cannot be
      written.
  """
  taus = list(taus)
  if not taus or any(not (math.isfinite(t) and t >= 0) for t in taus):
    raise UsageError(f"tau values must be finite and >= 0, got {taus}")
  clip_labels.check_split(split_threshold, top_k_per_class)
  if out:
    errors.check_output(out, "--out", folder=True)
    errors.require("analyze", "matplotlib")
  zs = clip_labels.read_npz(logits_path)
  n, c = zs.logits.shape
  log(f"read {logits_path}: {n:,} images, {c} classes"
      f"{', with labels' if zs.labels is not None else ', no labels'}")
  marginal = set_marginal(zs.logits)
  log(f"marginal of the set (mean softmax): max/min {marginal.max() / marginal.min():.1f}")
  before = share_stats(zs.pseudo_labels, c, zs.labels)
  log(_line("zero-shot", before))
  summary = {"logits": logits_path, "num_images": n, "num_classes": c,
             "has_labels": zs.labels is not None,
             "marginal": marginal.tolist(), "before": before, "after": {}}
  first = None
  for tau in taus:
    d = debias_set(zs.logits, tau, marginal)
    after = share_stats(d.pseudo_labels, c, zs.labels)
    summary["after"][f"{tau:g}"] = after
    log(_line(f"debiased τ={tau:g}", after))
    if first is None:
      first = (tau, d, after)
  if out:
    os.makedirs(out, exist_ok=True)
    tau, d, after = first
    if split_threshold is not None or top_k_per_class is not None:
      split = clip_labels.split_by_confidence(d.pseudo_labels, d.confidence, split_threshold,
                                  top_k_per_class)
      for name, pos in (("pseudo_labeled.csv", split.labeled),
                        ("unlabeled.csv", split.unlabeled)):
        clip_labels.write_csv(os.path.join(out, name), zs.index[pos], d.pseudo_labels[pos],
                  d.confidence[pos])
      summary["split"] = {"tau": tau, "threshold": split_threshold,
                          "top_k_per_class": top_k_per_class,
                          "pseudo_labeled": int(split.labeled.size),
                          "unlabeled": int(split.unlabeled.size)}
      if zs.labels is not None and split.labeled.size:
        summary["split"]["pseudo_labeled_accuracy"] = float(
            (d.pseudo_labels[split.labeled] == zs.labels[split.labeled]).mean())
      log(f"split at τ={tau:g}: {split.labeled.size:,} pseudo-labeled, "
          f"{split.unlabeled.size:,} unlabeled -> {out}/pseudo_labeled.csv, "
          "unlabeled.csv")
    _plot(os.path.join(out, "zeroshot_bias.png"), before, after, tau, c)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(metrics_lib.to_json(summary), f, indent=1, allow_nan=False)
    log(f"wrote {out}/summary.json and {out}/zeroshot_bias.png")
  return summary


def main(argv=None) -> int:
  parser = errors.ArgumentParser(
      prog="dlpl-zeroshot",
      description="Debias zero-shot (CLIP) predictions with the class marginal of "
      "the set itself, without training, and report the bias before and after.")
  parser.add_argument("--logits", required=True,
                      help=".npz with logits [N, C], optional labels [N], image_ids [N]")
  parser.add_argument("--tau", default=str(DEFAULT_TAU),
                      help="debiasing strength(s), comma-separated (default 0.4)")
  parser.add_argument("--out", default=None,
                      help="folder for summary.json, zeroshot_bias.png and the split")
  parser.add_argument("--split_threshold", type=float,
                      default=DEFAULT_SPLIT_THRESHOLD,
                      help="confidence for the pseudo-labeled set (default 0.95); "
                      "a negative value: no threshold (no split without "
                      "--top_k_per_class)")
  parser.add_argument("--top_k_per_class", type=int, default=None,
                      help="pseudo-label only the k most confident images per class")
  args = parser.parse_args(argv)

  def command():
    threshold = None if args.split_threshold < 0 else args.split_threshold
    run(args.logits, _taus(args.tau), args.out, threshold, args.top_k_per_class)

  return errors.run_command(command, paths=(args.logits, args.out))


if __name__ == "__main__":
  sys.exit(main())
