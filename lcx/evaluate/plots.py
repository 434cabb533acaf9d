"""PNG figures of an evaluation: perplexity vs length, loss by position, retrieval heatmaps and
retrieval accuracy vs length."""
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def log_scale_length_axis(ax, lengths) -> None:
  """Log x axis labelled at the evaluated lengths themselves."""
  ax.set_xscale("log")
  if lengths:
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def legend(ax, **kwargs) -> None:
  """A legend when something on the axes has a label (matplotlib warns of an empty one)."""
  if ax.get_legend_handles_labels()[0]:
    ax.legend(**kwargs)


def _applicable(rows):
  return [r for r in rows if "loss" in r]


def perplexity_vs_length(results: dict, path: pathlib.Path) -> pathlib.Path:
  fig, ax = plt.subplots(figsize=(6, 4))
  values = []
  for key, label in (("perplexity", "non-overlapping"), ("sliding", "sliding window")):
    rows = _applicable(results.get(key, []))
    if rows:
      ax.plot([r["length"] for r in rows], [r["perplexity"] for r in rows], marker="o", label=label)
      values += [r["perplexity"] for r in rows]
  keyed = [r for r in _applicable(results.get("perplexity", []))
           if (r.get("longppl") or {}).get("longppl") is not None]
  if keyed:  # LongPPL: perplexity over the key tokens only (lcx.evaluate.longppl)
    ax.plot([r["length"] for r in keyed], [r["longppl"]["longppl"] for r in keyed], marker="s",
            label="LongPPL (key tokens)")
    values += [r["longppl"]["longppl"] for r in keyed]
  ax.axvline(results["train_length"], color="grey", linestyle=":", label="training length")
  log_scale_length_axis(ax, [r["length"] for r in results.get("perplexity", [])])
  # Log only when perplexity spans an order of magnitude; a narrow range reads better linear.
  if values and max(values) / min(values) > 10:
    ax.set_yscale("log")
  ax.set(xlabel="evaluation length (tokens)", ylabel="perplexity",
         title=f"{results['scheme']}: {results['name']}")
  legend(ax)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def loss_by_position(results: dict, path: pathlib.Path) -> pathlib.Path:
  fig, ax = plt.subplots(figsize=(6, 4))
  for row in _applicable(results.get("perplexity", [])):
    bins = row["by_position"]
    centers = (np.array(bins["bin_start"]) + np.array(bins["bin_end"])) / 2
    ax.plot(centers, bins["loss"], label=f"L={row['length']}")
  ax.axvline(results["train_length"], color="grey", linestyle=":", label="training length")
  ax.set(xscale="log", xlabel="position in window", ylabel="loss (nats/token)",
         title=f"loss by position: {results['scheme']}, {results['name']}")
  legend(ax, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _cells(rows) -> np.ndarray:
  return np.array([[np.nan if a is None else a for a in row] for row in rows], dtype=float)


def retrieval_heatmaps(grids: list[dict], title: str, path: pathlib.Path) -> pathlib.Path:
  """One heatmap per style of a task: length x depth, coloured by exact match, each cell
  annotated 'exact / ranked'."""
  first = grids[0]
  width = 1.4 + 1.0 * len(first["depths"])
  fig, axes = plt.subplots(1, len(grids), figsize=(width * len(grids), 1.2 + 0.5 * len(first["lengths"])),
                           squeeze=False)
  for ax, grid in zip(axes[0], grids):
    exact, ranked = _cells(grid["exact"]), _cells(grid["ranked"])
    image = ax.imshow(exact, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(grid["depths"])), [f"{d:.0%}" for d in grid["depths"]])
    ax.set_yticks(range(len(grid["lengths"])), [str(n) for n in grid["lengths"]])
    for i in range(exact.shape[0]):
      for j in range(exact.shape[1]):
        text = ("n/a" if np.isnan(exact[i, j]) else f"{exact[i, j]:.0%} / {ranked[i, j]:.0%}")
        dark_cell = np.isnan(exact[i, j]) or exact[i, j] < 0.6
        ax.text(j, i, text, ha="center", va="center", fontsize=6,
                color="white" if dark_cell else "black")
    ax.set(xlabel="needle depth", ylabel="context length", title=grid["style"])
  fig.colorbar(image, ax=axes[0].tolist(), label="exact match (cells: exact / ranked)")
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def depth_mean(rows) -> list[float | None]:
  """Accuracy per length averaged over depths (None where the length was not applicable)."""
  return [None if None in row else float(np.mean(row)) for row in rows]


def retrieval_vs_length(grids: dict, train_length: int, title: str,
                        path: pathlib.Path) -> pathlib.Path:
  """Accuracy (averaged over depths) against length: a line per task and style, exact match
  solid and ranked dashed, with chance and the training length marked."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  lengths = sorted({n for g in grids.values() for n in g["lengths"]})
  for ax, kind in zip(axes, ("exact", "ranked")):
    for key, grid in grids.items():
      points = [(n, a) for n, a in zip(grid["lengths"], depth_mean(grid[kind])) if a is not None]
      if points:
        ax.plot(*zip(*points), marker="o", label=key, linestyle="-" if kind == "exact" else "--")
    if kind == "ranked" and grids:
      ax.axhline(next(iter(grids.values()))["chance"], color="grey", linewidth=0.8,
                 label="chance")
    ax.axvline(train_length, color="grey", linestyle=":", label="training length")
    log_scale_length_axis(ax, lengths)
    ax.set(xlabel="context length (tokens)", title=f"{kind}" + (" match" if kind == "exact"
                                                               else " against distractors"))
  axes[0].set(ylabel="accuracy (mean over depths)", ylim=(-0.03, 1.03))
  legend(axes[1], fontsize=6)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
