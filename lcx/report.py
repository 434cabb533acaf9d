"""python -m lcx.report DIR: aggregate a study into DIR/report.md and PNG figures.

DIR holds runs as the sweep lays them out, DIR/<run>/<stage>/ with summary.json for training
stages and eval/<name>.json for their evaluations; any folder of lcx runs and evaluations works.
Each evaluation becomes a row (a "variant": the scheme, with its RoPE scaling and whether it was
fine-tuned), with its perplexity and retrieval at each multiple of the pretraining length, and
the cost of the training behind it. Every figure draws a variant in the same colour and marker.
"""
import dataclasses
import json
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from lcx import cli  # noqa: E402
from lcx import config as config_lib  # noqa: E402
from lcx.claims import claims_table  # noqa: E402
from lcx.evaluate.plots import depth_mean, legend, log_scale_length_axis  # noqa: E402
from lcx.evaluate.retrieval import DISTANCE_BUCKETS, pool_distances  # noqa: E402
from lcx.runs import source_dir  # noqa: E402

MARKERS = "os^vD<>ph*"

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

  def retrieval_tasks(self) -> list[str]:
    return list(dict.fromkeys(g["task"] for g in self.results.get("retrieval", {}).values()))

  def retrieval(self, task: str, kind: str, multiple: float) -> float | None:
    """Accuracy (exact or ranked) of a task at a multiple, the mean over its styles and depths."""
    values = []
    for grid in self.results.get("retrieval", {}).values():
      if grid["task"] != task:
        continue
      for length, value in zip(grid["lengths"], depth_mean(grid[kind])):
        if math.isclose(length / self.results["base_length"], multiple) and value is not None:
          values.append(value)
    return float(np.mean(values)) if values else None

  def retrieval_trials(self, task: str, multiple: float) -> int:
    """How many trials retrieval(task, ..., multiple) averages: trials per cell x the depths
    scored, over the task's styles (0 where the study did not record its trial count)."""
    n = 0
    for grid in self.results.get("retrieval", {}).values():
      if grid["task"] != task:
        continue
      for length, row in zip(grid["lengths"], grid["exact"]):
        if math.isclose(length / self.results["base_length"], multiple):
          n += grid.get("trials", 0) * sum(x is not None for x in row)
    return n

  def by_distance(self, task: str, kind: str) -> dict[str, tuple[float, int]]:
    """Accuracy (exact or ranked) of a task by the needle's distance in segments, pooled over
    styles, lengths and depths into DISTANCE_BUCKETS: bucket -> (accuracy, trials). Empty for an
    evaluation without distances (a plain model evaluated without --distance_unit)."""
    return pool_distances([g["by_distance"] for g in self.results.get("retrieval", {}).values()
                           if g["task"] == task and "by_distance" in g], kind)

  def longest_at_90(self, task: str) -> int | None:
    longest = [g["longest_at_90"] for g in self.results.get("retrieval", {}).values()
               if g["task"] == task and g["longest_at_90"] is not None]
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
  model = (results.get("config") or {}).get("model", {})
  if model.get("segment_len"):  # a run in segments: its memory mechanism, or its window alone
    mechanism = model.get("memory", "none")
    label += f" window {model['segment_len']}" if mechanism == "none" else f" + {mechanism}"
    if model.get("memory_reset"):  # the ablation: the same weights, the memory wiped
      label += " (memory wiped)"
  seed = (results.get("config") or {}).get("seed", 0)
  if seed:  # a study's repeat with another seed
    label += f" seed {seed}"
  rope = results.get("rope") or {}
  if rope.get("keep", 1.0) != 1.0:
    label = f"p-rope {rope['keep']:g}"
  if rope.get("scaling", "none") != "none":
    label += f" {'FT' if finetuned else 'zero-shot'} {rope['scaling']} x{rope['factor']:g}"
  elif finetuned:
    label += " FT"
  return label


# Settings that say where, how or how often a run was computed and logged, or that are derived
# from others: not what tells two variants apart.
_NOT_A_DIFFERENCE = ("wandb.", "mesh.", "checkpoint.", "eval.", "data.data_dir",
                     "data.tokenizer_sha256", "init_from", "init_optimizer", "resume_changes",
                     "train.peak_flops", "train.log_every", "model.max_len", "model.head_dim",
                     "model.vocab_size", "model.rope.original_length", "model.attention")


def _settings(results: dict) -> dict[str, str]:
  """What defines an evaluated variant, flat: its run's config and the evaluation's overrides."""
  def flat(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from flat(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value
  settings = {k: v for k, v in flat(results.get("config") or {})
              if not k.startswith(_NOT_A_DIFFERENCE)}
  for override in results.get("overrides", []):  # evaluated with, e.g., model.rope.factor=8
    key, _, value = override.partition("=")
    settings[key] = value
  return {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in settings.items()}


def distinguish(variants: list[Variant], names: list[str], limit: int = 3) -> None:
  """Variants that would share a label get what differs between them added to it, as a reader
  would name them (`rope learning_rate=0.001`), or their run's folder when nothing does."""
  groups: dict[str, list[int]] = {}
  for i, v in enumerate(variants):
    groups.setdefault(v.label, []).append(i)
  for label, members in groups.items():
    if len(members) < 2:
      continue
    settings = [_settings(variants[i].results) for i in members]
    differing = sorted(k for k in set().union(*settings)
                       if len({s.get(k, "unset") for s in settings}) > 1)
    short = {k: k.split(".", 1)[-1] for k in differing}  # data.seq_len -> seq_len
    for i, s in zip(members, settings):
      parts = [f"{short[k]}={s.get(k, 'unset')}" for k in differing[:limit]]
      if len(differing) > limit:
        parts.append(f"+{len(differing) - limit} more")
      variants[i].label = f"{label} {' '.join(parts)}" if parts else f"{label} ({names[i]})"


def collect(directory: pathlib.Path) -> tuple[list[Variant], list[str]]:
  """(every evaluation under directory with the training summaries behind it, a line for each
  evaluation that could not be read or lacks the training behind it)."""
  variants, names, problems = [], [], []
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
      names.append(str(path.relative_to(directory).parent.parent / path.stem))
    except Unreadable as e:
      problems.append(f"{path.relative_to(directory)}: left out, {e}")
  distinguish(variants, names)
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
  """Markdown: perplexity per multiple (non-overlapping / sliding), retrieval per task, cost."""
  head = " | ".join(f"{m}x" for m in MULTIPLES)
  lines = [f"| variant | {head} |", "| --- |" + " ---: |" * len(MULTIPLES)]
  for v in variants:
    cells = " | ".join(f"{_fmt(v.at('perplexity', m))} / {_fmt(v.at('sliding', m))}"
                       for m in MULTIPLES)
    lines.append(f"| {v.label} | {cells} |")
  lines += ["", "Cells: perplexity non-overlapping / sliding window, at multiples of the "
            "pretraining length."]
  lines += retrieval_tables(variants)
  lines += distance_tables(variants)
  lines += segment_table(variants)
  lines += memory_cost_table(variants)
  lines += ["", "| variant | pretrain tokens | FLOPs | time (s) | tokens/s | peak memory | "
            "fine-tune tokens | FLOPs | time (s) |", "| --- |" + " ---: |" * 8]
  for v in variants:
    if _memory_wiped(v):  # an evaluation ablation: its arm's row has the same training
      continue
    p, f = v.pretrain, v.finetune or {}
    lines.append(
        f"| {v.label} | {_si(p['tokens_seen'])} | {_si(p['flops_seen'])} | "
        f"{p['train_seconds']:.0f} | {_si(p['tokens_per_second'])} | "
        f"{_bytes(p.get('peak_memory_bytes'))} | {_si(f.get('tokens_seen'))} | "
        f"{_si(f.get('flops_seen'))} | {_fmt(f.get('train_seconds'), '.0f')} |")
  return "\n".join(lines)


def _memory_wiped(v: Variant) -> bool:
  return bool((v.results.get("config") or {}).get("model", {}).get("memory_reset"))


def _trained_alike(v: Variant) -> tuple:
  """What a memory arm and its window without memory share: the scheme, the seed and the
  training data (a study's text-only part must not be read against its retrieval mixture)."""
  config = v.results.get("config") or {}
  # fields added since a run was saved count as it had them
  data = config_lib.fill_missing_data(ml_collections.ConfigDict(config.get("data", {})))
  return (v.results["scheme"], config.get("seed", 0), json.dumps(data.to_dict(), sort_keys=True))


def memory_cost_table(variants: list[Variant]) -> list[str]:
  """For runs in segments: what each arm's memory costs next to the window alone of its scheme
  and seed: the keys a query attends to besides its segment (mean over layers), training
  tokens/s and step time against the window, evaluation tokens/s (perplexity scoring, streamed)
  and peak memory."""
  rows = []
  for v in variants:
    config = v.results.get("config") or {}
    model = config.get("model", {})
    if model.get("segment_len") and not _memory_wiped(v):
      rows.append((v, _trained_alike(v), model))
  if not rows:
    return []
  windows = {key: v.pretrain["tokens_per_second"] for v, key, model in rows
             if model.get("memory", "none") == "none"}
  lines = ["", "What each memory costs (step time vs window: the window alone of the same scheme "
           "and seed over this arm's training tokens/s; evaluation tokens/s: perplexity scoring, "
           "streamed segment by segment):", "",
           "| variant | memory keys per query | train tokens/s | step time vs window | "
           "eval tokens/s | peak memory |", "| --- |" + " ---: |" * 5]
  for v, key, model in rows:
    cfg = config_lib.model_config(config_lib.fill_missing(
        ml_collections.ConfigDict(v.results["config"])))
    keys = cfg.attention_context(v.results["train_length"])[1]
    speed = v.pretrain["tokens_per_second"]
    versus = f"{windows[key] / speed:.2f}" if key in windows else "-"
    lines.append(f"| {v.label} | {keys:g} | {_si(speed)} | {versus} | "
                 f"{_si(v.results.get('scoring_tokens_per_second'))} | "
                 f"{_bytes(v.pretrain.get('peak_memory_bytes'))} |")
  return lines


def segment_table(variants: list[Variant]) -> list[str]:
  """For runs in segments (a memory study): the loss of each segment of the training-length
  window, and the mean of the second and later against the window without memory of the same
  scheme and seed (what training with the memory gave), and against the same weights evaluated
  with their memory wiped (model.memory_reset: what the trained model draws from its memory)."""
  rows = []
  for v in variants:
    first = next((r for r in v.results["perplexity"] if "by_segment" in r), None)
    if first is not None:
      config = v.results.get("config") or {}
      model = config.get("model", {})
      rows.append((v, first["by_segment"]["loss"], _trained_alike(v),
                   model.get("memory", "none"), bool(model.get("memory_reset"))))
  if not rows:
    return []
  n = max(len(losses) for _, losses, *_ in rows)
  late = lambda losses: float(np.mean(losses[1:]))
  windows = {key: late(losses) for _, losses, key, mechanism, _ in rows if mechanism == "none"}
  wiped = {(key, mechanism): late(losses) for _, losses, key, mechanism, reset in rows if reset}
  lines = ["", f"Loss by segment of the window at 1x (the first segment has no memory yet; "
           f"`late`: the mean of segments 2-{n}; `vs window`: late minus the window without "
           "memory of the same scheme and seed, trained alike; `vs wiped`: late minus the same "
           "weights with their memory wiped at every segment; negative when the memory is "
           "used):", "",
           "| variant | " + " | ".join(f"segment {i + 1}" for i in range(n)) +
           " | late | vs window | vs wiped |", "| --- |" + " ---: |" * (n + 3)]
  # an arm across seeds (label, training data): each seed against its own window
  by_arm: dict[tuple[str, str], list[tuple[float, float]]] = {}
  for v, losses, key, mechanism, reset in rows:
    has_memory = mechanism != "none" and not reset
    versus = (f"{late(losses) - windows[key]:+.3f}" if has_memory and key in windows else "-")
    versus_wiped = (f"{late(losses) - wiped[key, mechanism]:+.3f}"
                    if has_memory and (key, mechanism) in wiped else "-")
    cells = " | ".join(f"{x:.3f}" for x in losses) + " | -" * (n - len(losses))
    lines.append(f"| {v.label} | {cells} | {late(losses):.3f} | {versus} | {versus_wiped} |")
    if has_memory and key in windows:
      # the label without its seed (nor what told it apart from another run of that seed)
      unseeded = {**v.results, "config": {**(v.results.get("config") or {}), "seed": 0}}
      arm = (_label(unseeded, v.finetune is not None), key[2])
      by_arm.setdefault(arm, []).append((late(losses) - windows[key],
                                         late(losses) - wiped.get((key, mechanism), np.nan)))
  if any(len(diffs) > 1 for diffs in by_arm.values()):
    spread = lambda x: (f"{np.mean(x):+.3f} | {np.std(x):.3f} | {min(x):+.3f} | {max(x):+.3f}"
                        if x else "- | - | - | -")
    lines += ["", "Over seeds (each seed against its own window, and against its own weights "
              "with the memory wiped):", "",
              "| variant | seeds | vs window mean | std | min | max | vs wiped mean | std | min | "
              "max |", "| --- |" + " ---: |" * 9]
    for (arm, _), diffs in by_arm.items():
      wiped_diffs = [w for _, w in diffs if not np.isnan(w)]
      lines.append(f"| {arm} | {len(diffs)} | {spread([d for d, _ in diffs])} | "
                   f"{spread(wiped_diffs)} |")
  return lines


def _percent(value) -> str:
  return "n/a" if value is None else f"{value:.0%}"


def retrieval_tables(variants: list[Variant]) -> list[str]:
  """One table per retrieval task: exact / ranked accuracy per variant and multiple, and the
  longest length retrieved at >= 90% exact match."""
  tasks = list(dict.fromkeys(t for v in variants for t in v.retrieval_tasks()))
  lines = []
  for task in tasks:
    head = " | ".join(f"{m}x" for m in MULTIPLES)
    lines += ["", f"**Retrieval: {task}**", "", f"| variant | {head} | longest at >= 90% |",
              "| --- |" + " ---: |" * (len(MULTIPLES) + 1)]
    for v in variants:
      if task not in v.retrieval_tasks():
        continue
      cells = " | ".join(f"{_percent(v.retrieval(task, 'exact', m))} / "
                         f"{_percent(v.retrieval(task, 'ranked', m))}" for m in MULTIPLES)
      lines.append(f"| {v.label} | {cells} | {_fmt(v.longest_at_90(task), 'd')} |")
  if tasks:
    styles = sorted({g["style"] for v in variants for g in v.results["retrieval"].values()})
    lines += ["", "Cells: exact match of greedy decoding / true answer ranked first among 10 "
              f"(chance 10%), the mean over depths and styles ({', '.join(styles)})."]
  return lines


def distance_tables(variants: list[Variant]) -> list[str]:
  """Per retrieval task that recorded distances: exact / ranked accuracy by how many segments
  back the needle lies, per variant (the memory study's question: how far back each memory
  reaches)."""
  lines = []
  for task in dict.fromkeys(t for v in variants for t in v.retrieval_tasks()):
    rows = [(v, v.by_distance(task, "exact"), v.by_distance(task, "ranked")) for v in variants]
    rows = [r for r in rows if r[1]]
    if not rows:
      continue
    units = sorted({g["by_distance"]["unit"] for v, _, _ in rows
                    for g in v.results["retrieval"].values() if "by_distance" in g})
    buckets = [b for b in DISTANCE_BUCKETS if any(b in exact for _, exact, _ in rows)]
    lines += ["", f"**{task} by the needle's distance in segments "
              f"({', '.join(map(str, units))} tokens) before the question**", "",
              "| variant | " + " | ".join(buckets) + " |", "| --- |" + " ---: |" * len(buckets)]
    for v, exact, ranked in rows:
      cells = " | ".join(f"{exact[b][0]:.0%} / {ranked[b][0]:.0%} ({exact[b][1]})"
                         if b in exact else "-" for b in buckets)
      lines.append(f"| {v.label} | {cells} |")
    lines += ["", "Cells: exact match / ranked first (trials), pooled over lengths, depths and "
              "styles; 0 is the question's own segment, which a window without memory sees."]
  return lines


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
  if tasks:
    paths["retrieval_vs_length"] = _retrieval_curves(variants, tasks, look, title, out)
  for task in tasks:
    paths[f"retrieval_{task}"] = _retrieval_heatmaps(variants, task, title, out)
  if any(v.by_distance(task, "exact") for v in variants for task in tasks):
    paths["retrieval_by_distance"] = _distance_curves(variants, tasks, look, title, out)
  return paths


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
    for v in variants:
      points = [(m * v.results["base_length"], v.retrieval(task, "exact", m)) for m in MULTIPLES]
      points = [(n, a) for n, a in points if a is not None]
      if points:
        ax.plot(*zip(*points), label=v.label, **look[v.label])
    log_scale_length_axis(ax, sorted({m * v.results["base_length"] for v in variants
                                      for m in MULTIPLES}))
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


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def study_name(variants: list[Variant], directory: pathlib.Path) -> str:
  """The study the runs belong to (the W&B group the sweep gives them), else the folder's name."""
  groups = {v.results["config"].get("wandb", {}).get("group") for v in variants} - {None, ""}
  return groups.pop() if len(groups) == 1 else directory.name


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
  title = study_name(variants, directory)
  paths = figures(variants, directory / "figures", title)
  table = tables(variants)
  if missing or problems:
    table += "\n\nNot in this report:\n" + "\n".join(
        f"- {line}" for line in missing + problems)
  body = [f"# Study report: {title}", "", table, "", "## Claims vs measured", "",
          *claims_table(variants), "", "## Figures", ""]
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
