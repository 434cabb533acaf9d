"""The report's markdown tables: perplexity per multiple, retrieval per task and by needle
distance, loss by segment for memory studies, and what each variant's training cost."""
import json

import ml_collections
import numpy as np

from lcx.data.mixture import fill_missing_data
from lcx.evaluate.records import DISTANCE_BUCKETS
from lcx.report.variants import EFFECTIVE_FRACTION, MULTIPLES, Variant, label, one_per_training


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
    if not any(v.at("perplexity", m) for m in MULTIPLES):  # a retrieval-only evaluation
      continue
    cells = " | ".join(f"{_fmt(v.at('perplexity', m))} / {_fmt(v.at('sliding', m))}"
                       for m in MULTIPLES)
    lines.append(f"| {v.label} | {cells} |")
  lines += ["", "Cells: perplexity non-overlapping / sliding window, at multiples of the "
            "pretraining length."]
  lines += longppl_table(variants)
  lines += retrieval_tables(variants)
  lines += distance_tables(variants)
  lines += segment_table(variants)
  lines += memory_cost_table(variants)
  lines += ["", "| variant | pretrain tokens | FLOPs | time (s) | tokens/s | peak memory | "
            "fine-tune tokens | FLOPs | time (s) |", "| --- |" + " ---: |" * 8]
  # a row per training, however often it was evaluated (the memory wiped, say)
  for v in one_per_training([v for v in variants if not _memory_wiped(v)]):
    p, f = v.pretrain, v.finetune or {}
    lines.append(
        f"| {v.label} | {_si(p['tokens_seen'])} | {_si(p['flops_seen'])} | "
        f"{p['train_seconds']:.0f} | {_si(p['tokens_per_second'])} | "
        f"{_bytes(p.get('peak_memory_bytes'))} | {_si(f.get('tokens_seen'))} | "
        f"{_si(f.get('flops_seen'))} | {_fmt(f.get('train_seconds'), '.0f')} |")
  return "\n".join(lines)


def longppl_table(variants: list[Variant]) -> list[str]:
  """LongPPL and the share of key tokens per multiple, where the evaluations measured it."""
  measured = [m for m in MULTIPLES if any(v.longppl(m) for v in variants)]
  if not measured:
    return []
  lines = ["", "| variant | " + " | ".join(f"{m}x" for m in measured) + " |",
           "| --- |" + " ---: |" * len(measured)]
  for v in variants:
    if not any(v.longppl(m) for m in measured):
      continue
    cells = []
    for m in measured:
      record = v.longppl(m)
      cells.append("n/a" if record is None else
                   f"{_fmt(record['longppl'])} ({record['key_fraction']:.1%})")
    lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
  first = next(v.longppl(m) for v in variants for m in measured if v.longppl(m))
  return lines + ["", f"Cells: LongPPL, perplexity over the key tokens only (those whose loss "
                  f"drops by more than {first['drop']:g} nats with the whole window instead of "
                  f"the last {first['window']} tokens, and is below {first['ceiling']:g} nats "
                  "with it; Fang et al., 2025), and the share of targets that are key tokens. "
                  "Each model picks its own key tokens."]


def _memory_wiped(v: Variant) -> bool:
  return bool((v.results.get("config") or {}).get("model", {}).get("memory_reset"))


def _trained_alike(v: Variant) -> tuple:
  """What a memory arm and its window without memory share: the scheme, the seed and the
  training data (a study's text-only part must not be read against its retrieval mixture)."""
  config = v.results.get("config") or {}
  # fields added since a run was saved count as it had them
  data = fill_missing_data(ml_collections.ConfigDict(config.get("data", {})))
  return (v.results["scheme"], config.get("seed", 0), json.dumps(data.to_dict(), sort_keys=True))


def memory_cost_table(variants: list[Variant]) -> list[str]:
  """For runs in segments: what each arm's memory costs next to the window alone of its scheme
  and seed: the keys a query attends to besides its segment (mean over layers), training
  tokens/s and step time against the window, evaluation tokens/s (perplexity scoring, streamed)
  and peak memory."""
  rows = []
  for v in one_per_training([v for v in variants if not _memory_wiped(v)]):
    config = v.results.get("config") or {}
    model = config.get("model", {})
    if model.get("segment_len"):
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
    keys = v.results.get("memory_keys_per_query")  # recorded by evaluations since 2026-12-06
    speed = v.pretrain["tokens_per_second"]
    versus = f"{windows[key] / speed:.2f}" if key in windows else "-"
    lines.append(f"| {v.label} | {'-' if keys is None else format(keys, 'g')} | {_si(speed)} | "
                 f"{versus} | "
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
      arm = (label(unseeded, v.finetune is not None), key[2])
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
  """One table per retrieval task: exact / ranked accuracy per variant and multiple, the
  effective length (85% of the variant's own 1x exact accuracy kept) with the trials behind it,
  and the longest length retrieved at >= 90% exact match (a fixed threshold)."""
  tasks = list(dict.fromkeys(t for v in variants for t in v.retrieval_tasks()))
  lines = []
  for task in tasks:
    # the multiples some variant was scored at
    scored = [m for m in MULTIPLES if any(v.retrieval(task, "exact", m) is not None
                                          for v in variants)]
    head = " | ".join(f"{m}x" for m in scored)
    lines += ["", f"**Retrieval: {task}**", "",
              f"| variant | {head} | effective length | longest at >= 90% |",
              "| --- |" + " ---: |" * (len(scored) + 2)]
    for v in variants:
      if task not in v.retrieval_tasks():
        continue
      cells = " | ".join(f"{_percent(v.retrieval(task, 'exact', m))} / "
                         f"{_percent(v.retrieval(task, 'ranked', m))}" for m in scored)
      lines.append(f"| {v.label} | {cells} | {_effective(v, task)} | "
                   f"{_fmt(v.longest_at_90(task), 'd')} |")
  if tasks:
    styles = sorted({g["style"] for v in variants for g in v.results["retrieval"].values()})
    lines += ["", "Cells: exact match of greedy decoding / true answer ranked first among 10 "
              f"(chance 10%), the mean over depths and styles ({', '.join(styles)}). Effective "
              f"length: the longest multiple up to which exact match stays at or above "
              f"{EFFECTIVE_FRACTION:.0%} of the variant's own at 1x (NoLiMa's definition), with "
              "the trials at 1x and at that multiple; longest at >= 90%: the fixed threshold, "
              "in tokens."]
  return lines


def _effective(v: Variant, task: str) -> str:
  multiple = v.effective_length(task)
  if multiple is None:
    base = v.retrieval(task, "exact", 1)
    return "n/a" if base is None else "n/a (0% at 1x)"
  return (f"{multiple}x ({v.retrieval_trials(task, 1)} / "
          f"{v.retrieval_trials(task, multiple)} trials)")


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
