"""PNG figures of an evaluation: perplexity vs length, loss by position, passkey heatmaps."""
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
  ax.axvline(results["train_length"], color="grey", linestyle=":", label="training length")
  log_scale_length_axis(ax, [r["length"] for r in results.get("perplexity", [])])
  # Log only when perplexity spans an order of magnitude; a narrow range reads better linear.
  if values and max(values) / min(values) > 10:
    ax.set_yscale("log")
  ax.set(xlabel="evaluation length (tokens)", ylabel="perplexity",
         title=f"{results['scheme']}: {results['name']}")
  ax.legend()
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
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def passkey_heatmap(grid: dict, title: str, path: pathlib.Path) -> pathlib.Path:
  accuracy = np.array([[np.nan if a is None else a for a in row] for row in grid["accuracy"]])
  fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(grid["depths"]), 1.0 + 0.5 * len(grid["lengths"])))
  image = ax.imshow(accuracy, vmin=0, vmax=1, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(grid["depths"])), [f"{d:.0%}" for d in grid["depths"]])
  ax.set_yticks(range(len(grid["lengths"])), [str(n) for n in grid["lengths"]])
  for i in range(accuracy.shape[0]):
    for j in range(accuracy.shape[1]):
      text = "n/a" if np.isnan(accuracy[i, j]) else f"{accuracy[i, j]:.0%}"
      dark_cell = np.isnan(accuracy[i, j]) or accuracy[i, j] < 0.6
      ax.text(j, i, text, ha="center", va="center", fontsize=7,
              color="white" if dark_cell else "black")
  ax.set(xlabel="key depth", ylabel="context length", title=title)
  fig.colorbar(image, ax=ax, label="accuracy")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
