"""The Matplotlib panels; each draws on a given ``ax`` (see
:mod:`dlpl_jax.tools.analyze.report` for the figures they make up). Matplotlib is
imported inside the functions, so that the rest of the package works without it."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dlpl_jax.tools.analyze.runs import ALL, MASKED, Run, _num, eval_records
from dlpl_jax.tools.analyze.stats import (cosine_similarity, extremes, proportions,
                                          skewed, true_shares, window_stat)
from dlpl_jax.training import metrics as metrics_lib

# Beyond this many classes: no per-class legend/annotations, only extremes highlighted.
_MANY = 12


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
