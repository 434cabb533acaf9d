"""The report's figures: an overview, perplexity vs length, loss by position, quality against
compute, and retrieval vs length, by length and depth, and by needle distance. Every figure draws a variant in
the same colour and marker."""
import pathlib

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lcx.evaluate.plots import legend, log_scale_length_axis  # noqa: E402
from lcx.evaluate.records import DISTANCE_BUCKETS  # noqa: E402
from lcx.report.variants import MULTIPLES, Variant  # noqa: E402

MARKERS = "os^vD<>ph*"


def looks(variants: list[Variant]) -> dict[str, dict]:
  """One colour and marker per variant, the same in every figure; fine-tunes dashed."""
  colours = plt.cm.tab20.colors if len(variants) > 10 else plt.cm.tab10.colors
  return {v.label: dict(color=colours[i % len(colours)], marker=MARKERS[i % len(MARKERS)],
                        linestyle="--" if v.finetune else "-")
          for i, v in enumerate(variants)}


def _mark_training_length(ax, variants: list[Variant]) -> None:
  for length in sorted({v.results["base_length"] for v in variants}):
    ax.axvline(length, color="grey", linestyle=":", linewidth=1)
    ax.annotate("training length", (length, 1), xycoords=("data", "axes fraction"),
                xytext=(3, -10), textcoords="offset points", fontsize=7, color="grey")


def figures(variants: list[Variant], out: pathlib.Path, title: str) -> dict[str, pathlib.Path]:
  """The report's PNGs in `out`: perplexity vs length, loss by position, quality against
  compute, retrieval vs length and retrieval by length and depth, per task."""
  out.mkdir(parents=True, exist_ok=True)
  look = looks(variants)
  paths = {}
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for ax, kind, name in ((axes[0], "perplexity", "non-overlapping"),
                         (axes[1], "sliding", "sliding window")):
    for v in variants:
      rows = [r for r in v.results[kind] if "perplexity" in r]
      if not rows:  # a retrieval-only evaluation: no line, no legend entry
        continue
      ax.plot([r["length"] for r in rows], [r["perplexity"] for r in rows], label=v.label,
              **look[v.label])
    lengths = sorted({r["length"] for v in variants for r in v.results["perplexity"]})
    log_scale_length_axis(ax, lengths)
    _mark_training_length(ax, variants)
    ax.set(title=f"perplexity vs length ({name})", xlabel="evaluation length (tokens)")
  axes[0].set_ylabel("perplexity")
  legend(axes[1], fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  paths["perplexity_vs_length"] = _save(fig, out / "perplexity_vs_length.png")

  if any(v.longppl(m) for v in variants for m in MULTIPLES):
    paths["longppl_vs_length"] = _longppl_curves(variants, look, title, out)

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for v in variants:
    rows = [r for r in v.results["perplexity"] if "by_position" in r]
    if rows:
      bins = rows[-1]["by_position"]  # the longest length evaluated
      centers = (np.array(bins["bin_start"]) + np.array(bins["bin_end"])) / 2
      ax.plot(centers, bins["loss"], label=f"{v.label} (L={rows[-1]['length']})",
              markersize=3, **look[v.label])
  _mark_training_length(ax, variants)
  ax.set(xscale="log", xlabel="position in window", ylabel="loss (nats/token)",
         title=f"{title}: loss by position at the longest length")
  legend(ax, fontsize=7)
  fig.tight_layout()
  paths["loss_by_position"] = _save(fig, out / "loss_by_position.png")

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, multiple in zip(axes, (4, 16)):
    for v in variants:
      value = v.at("perplexity", multiple)
      if value is not None:
        ax.scatter(v.total_flops(), value, label=v.label, color=look[v.label]["color"],
                   marker=look[v.label]["marker"])
    ax.set(xscale="log", xlabel="total training FLOPs (pretrain + fine-tune)",
           ylabel="perplexity", title=f"quality at {multiple}x against compute")
  legend(axes[1], fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  paths["quality_vs_compute"] = _save(fig, out / "quality_vs_compute.png")

  tasks = list(dict.fromkeys(t for v in variants for t in v.retrieval_tasks()))
  paths["overview"] = _overview(variants, tasks[:1], look, title, out)
  if tasks:
    paths["retrieval_vs_length"] = _retrieval_curves(variants, tasks, look, title, out)
  for task in tasks:
    paths[f"retrieval_{task}"] = _retrieval_heatmaps(variants, task, title, out)
  if any(v.by_distance(task, "exact") for v in variants for task in tasks):
    paths["retrieval_by_distance"] = _distance_curves(variants, tasks, look, title, out)
  return paths


def _longppl_curves(variants, look, title, out) -> pathlib.Path:
  """LongPPL against length, and the share of key tokens it is read over."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for v in variants:
    rows = [r for r in v.results["perplexity"] if (r.get("longppl") or {}).get("longppl")]
    lengths = [r["length"] for r in rows]
    axes[0].plot(lengths, [r["longppl"]["longppl"] for r in rows], label=v.label, **look[v.label])
    axes[1].plot(lengths, [100 * r["longppl"]["key_fraction"] for r in rows], label=v.label,
                 **look[v.label])
  lengths = sorted({r["length"] for v in variants for r in v.results["perplexity"]})
  for ax, name in ((axes[0], "LongPPL (key tokens only)"), (axes[1], "key tokens (% of targets)")):
    log_scale_length_axis(ax, lengths)
    _mark_training_length(ax, variants)
    ax.set(title=name, xlabel="evaluation length (tokens)")
  legend(axes[1], fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, out / "longppl_vs_length.png")


def _overview(variants, tasks, look, title, out) -> pathlib.Path:
  """The study at a glance, small (README-sized): perplexity vs length, and exact match vs
  length on the first retrieval task where there is one."""
  fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(5 * (1 + len(tasks)), 3.6), squeeze=False)
  ax = axes[0, 0]
  for v in variants:
    rows = [r for r in v.results["perplexity"] if "perplexity" in r]
    ax.plot([r["length"] for r in rows], [r["perplexity"] for r in rows], label=v.label,
            markersize=4, **look[v.label])
  log_scale_length_axis(ax, sorted({r["length"] for v in variants
                                    for r in v.results["perplexity"]}))
  _mark_training_length(ax, variants)
  ax.set(yscale="log", title="perplexity vs length", xlabel="evaluation length (tokens)")
  ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 3, 5, 7)))  # 7, 10, 20, ...
  ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  for ax, task in zip(axes[0, 1:], tasks):
    for v in variants:
      points = [(m * v.results["base_length"], v.retrieval(task, "exact", m)) for m in MULTIPLES]
      points = [(n, a) for n, a in points if a is not None]
      if points:
        ax.plot(*zip(*points), markersize=4, **look[v.label])
    log_scale_length_axis(ax, sorted({m * v.results["base_length"] for v in variants
                                      for m in MULTIPLES}))
    _mark_training_length(ax, variants)
    ax.set(title=f"{task}: exact match", xlabel="context length (tokens)", ylim=(-0.03, 1.03))
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
             frameon=False)  # one legend for both panels, beside them
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, out / "overview.png", dpi=80)


def _distance_curves(variants, tasks, look, title, out) -> pathlib.Path:
  """Exact match against the needle's distance in segments, a panel per task."""
  tasks = [t for t in tasks if any(v.by_distance(t, "exact") for v in variants)]
  fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False,
                           sharey=True)
  for ax, task in zip(axes.flat, tasks):
    for v in variants:
      exact = v.by_distance(task, "exact")
      points = [(i, exact[b][0]) for i, b in enumerate(DISTANCE_BUCKETS) if b in exact]
      if points:
        ax.plot(*zip(*points), label=v.label, **look[v.label])
    ax.set_xticks(range(len(DISTANCE_BUCKETS)), DISTANCE_BUCKETS)
    ax.set(title=task, xlabel="needle distance (segments before the question)",
           ylim=(-0.03, 1.03))
  axes[0, 0].set_ylabel("exact match")
  legend(axes[0, 0], fontsize=6)
  fig.suptitle(f"{title}: retrieval by distance (pooled over lengths, depths and styles)")
  fig.tight_layout()
  return _save(fig, out / "retrieval_by_distance.png")


def _retrieval_curves(variants, tasks, look, title, out) -> pathlib.Path:
  """Exact match (mean over depths and styles) against length, a panel per task."""
  cols = min(3, len(tasks))
  rows = -(-len(tasks) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False,
                           sharey=True)
  for ax, task in zip(axes.flat, tasks):
    scored = set()  # the lengths the axis spans: those some variant was scored at
    for v in variants:
      points = [(m * v.results["base_length"], v.retrieval(task, "exact", m)) for m in MULTIPLES]
      points = [(n, a) for n, a in points if a is not None]
      if points:
        ax.plot(*zip(*points), label=v.label, **look[v.label])
        scored.update(n for n, _ in points)
    log_scale_length_axis(ax, sorted(scored))
    _mark_training_length(ax, variants)
    ax.set(title=task, xlabel="context length (tokens)", ylim=(-0.03, 1.03))
  for ax in axes[:, 0]:
    ax.set_ylabel("exact match")
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  legend(axes.flat[0], fontsize=6)
  fig.suptitle(f"{title}: retrieval vs length (mean over depths and styles)")
  fig.tight_layout()
  return _save(fig, out / "retrieval_vs_length.png")


def _retrieval_heatmaps(variants, task, title, out) -> pathlib.Path:
  """Exact match by length and depth (mean over styles), a panel per variant."""
  shown = [v for v in variants if task in v.retrieval_tasks()]
  cols = min(4, len(shown))
  rows = -(-len(shown) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False)
  for ax, v in zip(axes.flat, shown):
    grids = [g for g in v.results["retrieval"].values() if g["task"] == task]
    cells = np.array([[[np.nan if a is None else a for a in row] for row in g["exact"]]
                      for g in grids], dtype=float).mean(axis=0)
    image = ax.imshow(cells, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    depths, lengths = grids[0]["depths"], grids[0]["lengths"]
    ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
    for i in range(cells.shape[0]):
      for j in range(cells.shape[1]):
        ax.text(j, i, "n/a" if np.isnan(cells[i, j]) else f"{cells[i, j]:.0%}", ha="center",
                va="center", fontsize=6, color="white" if not cells[i, j] >= 0.6 else "black")
    ax.set_title(v.label, fontsize=8, color=looks(variants)[v.label]["color"])
  for ax in list(axes.flat)[len(shown):]:
    ax.axis("off")
  fig.colorbar(image, ax=axes.ravel().tolist(), label="exact match")
  fig.supxlabel("needle depth")
  fig.supylabel("context length")
  fig.suptitle(f"{title}: {task} by length and depth (mean over styles)")
  return _save(fig, out / f"retrieval_{task}.png")


def _save(fig, path: pathlib.Path, dpi: int = 120) -> pathlib.Path:
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  plt.close(fig)
  return path
