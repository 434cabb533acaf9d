"""python -m lcx.report DIR: aggregate a study into DIR/report.md and PNG figures.

DIR holds runs as the sweep lays them out, DIR/<run>/<stage>/ with summary.json for training
stages and eval/<name>.json for their evaluations; any folder of lcx runs and evaluations works.
Each evaluation becomes a row (a "variant": the scheme, with its RoPE scaling and whether it was
fine-tuned), with its perplexity at each multiple of the pretraining length, passkey, and the cost
of the training behind it.
"""
import dataclasses
import json
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# A study has more variants than the default ten colours.
plt.rcParams["axes.prop_cycle"] = plt.cycler(color=plt.cm.tab20.colors)
import numpy as np  # noqa: E402

from lcx import cli  # noqa: E402
from lcx.evaluate.plots import log_scale_length_axis, passkey_heatmap  # noqa: E402
from lcx.runs import source_dir  # noqa: E402

MULTIPLES = (1, 2, 4, 8, 16)


@dataclasses.dataclass
class Variant:
  label: str
  results: dict  # an evaluation's JSON
  pretrain: dict  # summary.json of the pretraining run
  finetune: dict | None  # summary.json of the fine-tune, when there is one

  def at(self, kind: str, multiple: float) -> float | None:
    for row in self.results[kind]:
      if math.isclose(row["multiple"], multiple) and "perplexity" in row:
        return row["perplexity"]
    return None

  def passkey(self) -> int | None:
    longest = [g["longest_at_100"] for g in self.results["passkey"].values()
               if g["longest_at_100"] is not None]
    return max(longest) if longest else None

  def total_flops(self) -> float:
    return self.pretrain["flops_seen"] + (self.finetune["flops_seen"] if self.finetune else 0.0)


class Unreadable(ValueError):
  """A file of the study that is missing or not valid JSON."""


def _read(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise Unreadable(f"{path} is missing") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise Unreadable(f"{path} is not valid JSON ({e}); rerun the stage that writes it") from None


def _label(results: dict, finetuned: bool) -> str:
  label = results["scheme"]
  rope = results.get("rope") or {}
  if rope.get("scaling", "none") != "none":
    label += f" {'FT' if finetuned else 'zero-shot'} {rope['scaling']} x{rope['factor']:g}"
  elif finetuned:
    label += " FT"
  return label


def collect(directory: pathlib.Path) -> tuple[list[Variant], list[str]]:
  """(every evaluation under directory with the training summaries behind it, a line for each
  evaluation that could not be read or lacks the training behind it)."""
  variants, problems = [], []
  for path in sorted(directory.glob("**/eval/*.json")):
    run_dir = path.parent.parent  # not the path recorded inside: the study may have moved
    try:
      results = _read(path)
      summary = _read(run_dir / "summary.json")
      source = summary.get("init_from")
      if source:
        pretrain = _read(source_dir(source["workdir"], run_dir) / "summary.json")
        variants.append(Variant(_label(results, True), results, pretrain, summary))
      else:
        variants.append(Variant(_label(results, False), results, summary, None))
    except Unreadable as e:
      problems.append(f"{path.relative_to(directory)}: left out, {e}")
  # Scheme by scheme: the plain run, then its zero-shot variants, then its fine-tunes.
  variants.sort(key=lambda v: (v.results["scheme"], v.finetune is not None, v.label))
  return variants, problems


def unfinished_stages(directory: pathlib.Path) -> list[str]:
  """Stages of the study (DIR/status.json, written by the sweep) whose outputs are not there."""
  status = directory / "status.json"
  if not status.exists():
    return []
  try:
    states = _read(status)
  except Unreadable as e:
    return [str(e)]
  missing = []
  for run, stages in states.items():
    for stage, state in stages.items():
      done = (any((directory / run).glob(f"*/eval/{stage}.json"))  # an evaluation
              or _finished_training(directory / run / stage))
      if not done:
        missing.append(f"{run}/{stage}: not finished, no outputs yet (sweep status: {state})")
  return missing


def _finished_training(stage_dir: pathlib.Path) -> bool:
  try:
    return not _read(stage_dir / "summary.json").get("preempted", True)
  except Unreadable:
    return False


def _fmt(value, spec=".2f") -> str:
  return "n/a" if value is None else format(value, spec)


def _si(value) -> str:
  if value is None:
    return "n/a"
  for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(value) >= scale:
      return f"{value / scale:.2f}{unit}"
  return f"{value:.0f}"


def _bytes(value) -> str:
  return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def tables(variants: list[Variant]) -> str:
  """Markdown: perplexity per multiple (non-overlapping / sliding), passkey, and cost."""
  head = " | ".join(f"{m}x" for m in MULTIPLES)
  lines = [f"| variant | {head} | passkey 100% up to |", "| --- |" + " ---: |" * (len(MULTIPLES) + 1)]
  for v in variants:
    cells = " | ".join(f"{_fmt(v.at('perplexity', m))} / {_fmt(v.at('sliding', m))}"
                       for m in MULTIPLES)
    lines.append(f"| {v.label} | {cells} | {_fmt(v.passkey(), 'd')} |")
  lines += ["", "Cells: perplexity non-overlapping / sliding window, at multiples of the "
            "pretraining length.", "",
            "| variant | pretrain tokens | FLOPs | time (s) | tokens/s | peak memory | "
            "fine-tune tokens | FLOPs | time (s) |", "| --- |" + " ---: |" * 8]
  for v in variants:
    p, f = v.pretrain, v.finetune or {}
    lines.append(
        f"| {v.label} | {_si(p['tokens_seen'])} | {_si(p['flops_seen'])} | "
        f"{p['train_seconds']:.0f} | {_si(p['tokens_per_second'])} | "
        f"{_bytes(p.get('peak_memory_bytes'))} | {_si(f.get('tokens_seen'))} | "
        f"{_si(f.get('flops_seen'))} | {_fmt(f.get('train_seconds'), '.0f')} |")
  return "\n".join(lines)


def figures(variants: list[Variant], out: pathlib.Path) -> dict[str, pathlib.Path]:
  """The report's PNGs in `out`: perplexity vs length, loss by position, quality against
  compute, and a passkey heatmap per variant and style."""
  out.mkdir(parents=True, exist_ok=True)
  paths = {}
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for ax, kind, title in ((axes[0], "perplexity", "non-overlapping"),
                          (axes[1], "sliding", "sliding window")):
    for v in variants:
      rows = [r for r in v.results[kind] if "perplexity" in r]
      ax.plot([r["length"] for r in rows], [r["perplexity"] for r in rows], marker="o",
              label=v.label, linestyle="--" if v.finetune else "-")
    lengths = sorted({r["length"] for v in variants for r in v.results["perplexity"]})
    log_scale_length_axis(ax, lengths)
    ax.set(title=f"perplexity vs length ({title})", xlabel="evaluation length (tokens)")
  axes[0].set_ylabel("perplexity")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  paths["perplexity_vs_length"] = _save(fig, out / "perplexity_vs_length.png")

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for v in variants:
    rows = [r for r in v.results["perplexity"] if "by_position" in r]
    if rows:
      bins = rows[-1]["by_position"]  # the longest length evaluated
      centers = (np.array(bins["bin_start"]) + np.array(bins["bin_end"])) / 2
      ax.plot(centers, bins["loss"], label=f"{v.label} (L={rows[-1]['length']})")
  ax.set(xscale="log", xlabel="position in window", ylabel="loss (nats/token)",
         title="loss by position at the longest length")
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths["loss_by_position"] = _save(fig, out / "loss_by_position.png")

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, multiple in zip(axes, (4, 16)):
    for v in variants:
      value = v.at("perplexity", multiple)
      if value is not None:
        ax.scatter(v.total_flops(), value, label=v.label)
    ax.set(xscale="log", xlabel="total training FLOPs (pretrain + fine-tune)",
           ylabel="perplexity", title=f"quality at {multiple}x against compute")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  paths["quality_vs_compute"] = _save(fig, out / "quality_vs_compute.png")

  for v in variants:
    for style, grid in v.results["passkey"].items():
      name = f"passkey_{v.label.replace(' ', '_')}_{style}"
      paths[name] = passkey_heatmap(grid, f"passkey ({style}): {v.label}", out / f"{name}.png")
  return paths


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_report(directory) -> tuple[pathlib.Path, str]:
  """DIR/report.md and DIR/figures/*.png; returns the report's path and its tables."""
  directory = pathlib.Path(directory).expanduser()
  if not directory.is_dir():
    raise ValueError(f"{directory} is not a directory; pass a study directory (the sweep's --out)")
  variants, problems = collect(directory)
  missing = unfinished_stages(directory)
  if not variants:
    raise ValueError(f"{directory} holds no evaluated lcx runs (no <run>/eval/*.json with a "
                     "summary.json beside it)" + "".join(f"; {p}" for p in problems + missing))
  paths = figures(variants, directory / "figures")
  table = tables(variants)
  if missing or problems:
    table += "\n\nNot in this report:\n" + "\n".join(
        f"- {line}" for line in missing + problems)
  body = [f"# Study report: {directory.name}", "", table, "", "## Figures", ""]
  body += [f"![{name}](figures/{path.name})" for name, path in paths.items()]
  report = directory / "report.md"
  report.write_text("\n".join(body) + "\n")
  return report, table


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    sys.exit("usage: python -m lcx.report DIR")
  try:
    report, table = write_report(argv[0])
  except ValueError as e:
    sys.exit(f"lcx.report: {e}")
  except OSError as e:  # the study directory not writable
    sys.exit(f"lcx.report: {cli.os_error(e)}")
  print(table)
  print(f"\nreport: {report}\nfigures: {report.parent / 'figures'}")


if __name__ == "__main__":
  main()
