"""A study's evaluations as variants: each evaluation JSON with the training summaries behind
it, named as a reader would name it, and what of the study is missing."""
import dataclasses
import itertools
import json
import math
import pathlib

import numpy as np

from lcx.evaluate.plots import depth_mean
from lcx.evaluate.records import pool_distances
from lcx.runs import layout

MULTIPLES = (1, 2, 4, 8, 16)
EFFECTIVE_FRACTION = 0.85  # effective length: the share of the 1x score kept (NoLiMa's)


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

  def longppl(self, multiple: float) -> dict | None:
    """The LongPPL record at a multiple (lcx.evaluate.longppl), where it was measured."""
    for row in self.results["perplexity"]:
      if math.isclose(row["multiple"], multiple) and "longppl" in row:
        return row["longppl"]
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

  def effective_length(self, task: str, fraction: float = EFFECTIVE_FRACTION):
    """NoLiMa's effective length: the longest multiple up to which exact accuracy stays at or
    above `fraction` of this variant's own at 1x (fair to a small model whose 1x score is below
    a fixed threshold). None where 1x was not scored or scored 0."""
    base = self.retrieval(task, "exact", 1)
    if not base:
      return None
    longest = None
    for multiple in MULTIPLES:
      value = self.retrieval(task, "exact", multiple)
      if value is None:
        continue
      if value < fraction * base:
        break
      longest = multiple
    return longest

  def longest_at_90(self, task: str) -> int | None:
    longest = [g["longest_at_90"] for g in self.results.get("retrieval", {}).values()
               if g["task"] == task and g["longest_at_90"] is not None]
    return max(longest) if longest else None

  def total_flops(self) -> float:
    return self.pretrain["flops_seen"] + (self.finetune["flops_seen"] if self.finetune else 0.0)


def one_per_training(variants: list[Variant]) -> list[Variant]:
  """A variant per training run, for what the training decides (its cost): of the evaluations
  of one run (again on training's keys, say), the first that scored perplexity, else the first."""
  chosen: dict[str, Variant] = {}
  for v in variants:
    first = chosen.setdefault(v.results["run"], v)
    if first.results.get("scoring_tokens_per_second") is None and v.results.get(
        "scoring_tokens_per_second") is not None:
      chosen[v.results["run"]] = v
  return list(chosen.values())


class Unreadable(ValueError):
  """A file of the study that is missing or not valid JSON."""


def _read(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise Unreadable(f"{path} is missing") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise Unreadable(f"{path} is not valid JSON ({e}); rerun the stage that writes it") from None


def rope_options(results: dict) -> dict:
  """model.rope as the run was evaluated with it ({} for another scheme). Results written before
  RoPE's options were its scheme's options carry them as "rope" for every scheme."""
  if "rope" in results:
    return results["rope"] or {}
  return (results.get("scheme_options") or {}) if results["scheme"] == "rope" else {}


def recipe(results: dict) -> str:
  """What a run adds to its scheme of the recipes models ship with (lcx.model): a per-layer
  pattern of schemes, local layers, QK-norm, an attention temperature, PoSE; "" for none."""
  config = results.get("config") or {}
  model, parts = config.get("model", {}), []
  layers = model.get("position_layers") or ()
  if layers:
    names = [str(e) for e in layers]
    runs = [(n, sum(1 for _ in group)) for n, group in itertools.groupby(names)]
    parts.append("+".join(f"{n}x{k}" if k > 1 else n for n, k in runs))
  if model.get("window") or model.get("chunk"):
    kinds = model.get("attention_layers") or ()
    local = f"window {model['window']}" if model.get("window") else f"chunk {model['chunk']}"
    parts.append(f"{local} ({'/'.join(kinds)})" if kinds else local)
  if model.get("qk_norm"):
    parts.append("qk-norm")
  temperature = (model.get("temperature") or {}).get("kind", "none")
  if temperature != "none":
    parts.append(f"temperature {temperature}")
  if (config.get("data") or {}).get("pose_target_len"):
    parts.append(f"PoSE to {config['data']['pose_target_len']}")
  return " ".join(parts)


def label(results: dict, finetuned: bool) -> str:
  label = results["scheme"]
  model = (results.get("config") or {}).get("model", {})
  if recipe(results):
    label = f"{label if not model.get('position_layers') else ''} {recipe(results)}".strip()
  if model.get("segment_len"):  # a run in segments: its memory mechanism, or its window alone
    mechanism = model.get("memory", "none")
    label += f" window {model['segment_len']}" if mechanism == "none" else f" + {mechanism}"
    if model.get("memory_reset"):  # the ablation: the same weights, the memory wiped
      label += " (memory wiped)"
  seed = (results.get("config") or {}).get("seed", 0)
  if seed:  # a study's repeat with another seed
    label += f" seed {seed}"
  rope = rope_options(results)
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
    if not key.startswith(_NOT_A_DIFFERENCE):
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
    # A field some runs lack (saved before it existed: they ran as its default) differs only
    # where the runs that have it disagree.
    differing = sorted(k for k in set().union(*settings)
                       if len({s[k] for s in settings if k in s}) > 1)
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
  for path in sorted(directory.glob(f"**/{layout.EVAL}/*.json")):
    run_dir = path.parent.parent  # not the path recorded inside: the study may have moved
    try:
      results = _read(path)
      summary = _read(run_dir / layout.SUMMARY)
      source = summary.get("init_from")
      if source:
        pretrain = _read(layout.source_dir(source["workdir"], run_dir) / layout.SUMMARY)
        variants.append(Variant(label(results, True), results, pretrain, summary))
      else:
        variants.append(Variant(label(results, False), results, summary, None))
      names.append(str(path.relative_to(directory).parent.parent / path.stem))
    except Unreadable as e:
      problems.append(f"{path.relative_to(directory)}: left out, {e}")
  distinguish(variants, names)
  # Scheme by scheme: the plain run, then its zero-shot variants, then its fine-tunes.
  variants.sort(key=lambda v: (v.results["scheme"], v.finetune is not None, v.label))
  return variants, problems


def unfinished_stages(directory: pathlib.Path) -> list[str]:
  """Stages of the study (DIR/status.json, written by the sweep) whose outputs are not there; a
  tuning stage (layout.TUNING_KINDS) writes into the run it tunes, so its sweep marker says it."""
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
      done = (any((directory / run).glob(f"*/{layout.EVAL}/{stage}.json"))  # an evaluation
              or _finished_training(directory / run / stage)
              or _tuned(directory / run / f"{stage}.done"))
      if not done:
        missing.append(f"{run}/{stage}: not finished, no outputs yet (sweep status: {state})")
  return missing


def _tuned(marker: pathlib.Path) -> bool:
  try:
    return marker.read_text().split()[1:] in ([kind] for kind in layout.TUNING_KINDS)
  except OSError:
    return False


def _finished_training(stage_dir: pathlib.Path) -> bool:
  try:
    return not _read(stage_dir / layout.SUMMARY).get("preempted", True)
  except Unreadable:
    return False


def study_name(variants: list[Variant], directory: pathlib.Path) -> str:
  """The study the runs belong to (the W&B group the sweep gives them), else the folder's name."""
  groups = {v.results["config"].get("wandb", {}).get("group") for v in variants} - {None, ""}
  return groups.pop() if len(groups) == 1 else directory.name
