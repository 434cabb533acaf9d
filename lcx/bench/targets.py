"""The targets this benchmark checks on every run: the CPU bench model's, and an accelerator
preset's (every scheme at full speed, measured against `none` through `auto`, whatever kernel
it picks)."""
from lcx import positions
from lcx.attention import FALLBACK, REFERENCE, TILED, preference
from lcx.bench.models import VARIANTS, local_kind
from lcx.bench.tables import TRAIN_LAYERS, _gib, _ratio
from lcx.bench.timing import implementations_for

TARGETS = {"rope_overhead": 1.03, "learned_bias_overhead": 1.10, "alibi_overhead": 1.01,
           "alibi_memory": 1.01, "mfu": 0.75, "eval_memory_gib": 8.0,
           # local layers (window-512, chunk-512 rows): time and memory per token from the
           # shortest length to the longest, at a fixed number of tokens per step (linear cost)
           "local_growth": 1.5,
           # a bias made from the data (FoX's): its gates, cumulative sums and per-row reads
           "data_bias_overhead": 1.15,
           # context parallelism: activation memory per device at context=4 against context=1,
           # one sequence of CONTEXT_TARGET_LENGTH tokens, the tiny model
           "context_memory": 0.35}
CONTEXT_TARGET_LENGTH = 16384
PRESET_TARGETS = {"bias_overhead": 1.05, "mfu_causal": 0.50, "eval_memory_gib": 16.0}
PIPELINE_TOKENS_PER_SECOND = 2e6  # per host, from the token cache


def target_checks(train_rows, eval_rows, profiles=()) -> list[tuple[str, bool, str]]:
  """(what, met, the measurement) for each target the rows can answer. The ALiBi overhead is also
  checked from the kernel timed alone (profiles), where the train step's noise does not reach."""
  checks = []
  ran = {r["implementation"] for r in train_rows}
  best = next((name for name in preference("cpu") if name in ran), None)  # auto's CPU order
  for r in train_rows:
    # A learned bias is measured through the fastest kernel that takes it, against none there.
    kind = positions.bias_kind(VARIANTS[r["scheme"]]["position"])
    if kind is not None and kind.learned:
      fastest = implementations_for(r["scheme"], (best, FALLBACK))[:1]
      target = TARGETS["data_bias_overhead" if kind.rows else "learned_bias_overhead"]
      if (r["implementation"],) == fastest and r["time_vs_none"] is not None:
        checks.append((f"{r['scheme']} step time <= {target}x none at "
                       f"L={r['length']} ({r['implementation']})",
                       r["time_vs_none"] <= target, _ratio(r["time_vs_none"])))
      continue
    if r["implementation"] != best:
      continue
    if r["scheme"] in ("rope", "xpos", "p-rope"):  # the rotations: within RoPE's figure
      checks.append((f"{r['scheme']} step time <= {TARGETS['rope_overhead']}x none at "
                     f"L={r['length']}", r["time_vs_none"] <= TARGETS["rope_overhead"],
                     _ratio(r["time_vs_none"])))
    if r["scheme"] == "alibi":
      checks.append((f"ALiBi step time <= {TARGETS['alibi_overhead']}x none at L={r['length']}",
                     r["time_vs_none"] <= TARGETS["alibi_overhead"], _ratio(r["time_vs_none"])))
      checks.append((f"ALiBi memory <= {TARGETS['alibi_memory']}x none at L={r['length']}",
                     r["memory_vs_none"] <= TARGETS["alibi_memory"], _ratio(r["memory_vs_none"])))
    if r["scheme"] == "none" and r["length"] == 1024:
      checks.append((f"MFU >= {100 * TARGETS['mfu']:.0f}% (d512 4L, L=1024, batch "
                     f"{r['batch']}, none)", r["mfu"] >= TARGETS["mfu"], f"{100 * r['mfu']:.1f}%"))
  for p in profiles:
    step = next((r for r in train_rows if r["scheme"] == "none" and r["length"] == p["length"]
                 and r["implementation"] == p["implementation"] == best), None)
    if step:
      added = TRAIN_LAYERS * (p["alibi_vs_none"] - 1) * p["forward_backward_seconds"]
      ratio = 1 + added / step["step_seconds"]
      checks.append((f"ALiBi step time <= {TARGETS['alibi_overhead']}x none at L={p['length']}, "
                     f"from the {best} kernel timed alone ({TRAIN_LAYERS} layers' added time)",
                     ratio <= TARGETS["alibi_overhead"], _ratio(ratio)))
  by = {(r["scheme"], r["length"], r["implementation"]): r for r in train_rows}
  for (scheme, length, implementation), r in by.items():
    dense = by.get((scheme, length, REFERENCE))
    if implementation in TILED and dense and scheme == "none":
      speedup = dense["step_seconds"] / r["step_seconds"]
      checks.append((f"{implementation} {'no slower than' if length <= 1024 else 'faster than'} "
                     f"dense at L={length}", speedup >= 1.0 if length <= 1024 else speedup > 1.0,
                     f"{speedup:.2f}x"))
  for (scheme, length, implementation), r in by.items():
    lengths = sorted(l for s, l, i in by if (s, i) == (scheme, implementation))
    if local_kind(scheme) and implementation in TILED and length == lengths[-1] > lengths[0]:
      short = by[(scheme, lengths[0], implementation)]
      per_token = lambda row, key: row[key] / (row["batch"] * row["length"])
      for what, key in (("time", "step_seconds"), ("memory", "memory_bytes")):
        growth = per_token(r, key) / per_token(short, key)
        checks.append((f"{scheme} ({implementation}) {what} per token at L={length} <= "
                       f"{TARGETS['local_growth']}x L={lengths[0]} (linear in length)",
                       growth <= TARGETS["local_growth"], f"{growth:.2f}x"))
  for r in eval_rows:
    if r["implementation"] == best and r["length"] == max(e["length"] for e in eval_rows):
      checks.append((f"evaluation of {r['length']} tokens within {TARGETS['eval_memory_gib']} "
                     "GiB", r["seconds"] is not None and r["memory_bytes"] <= TARGETS[
                         "eval_memory_gib"] * 2 ** 30, f"{_gib(r['memory_bytes'])} GiB"))
  return checks


def preset_target_checks(train_rows, eval_rows) -> list[tuple[str, bool, str]]:
  """An accelerator preset's targets: every scheme within PRESET_TARGETS['bias_overhead'] of
  `none` through `auto` (whichever kernels it picks for each), the causal MFU of `none` at
  L=1024, and the longest evaluation within its memory budget."""
  checks = []
  for r in train_rows:
    if r["implementation"] != "auto":
      continue
    if r["scheme"] != "none" and r["time_vs_none"] is not None:
      checks.append((f"{r['scheme']} step time <= {PRESET_TARGETS['bias_overhead']}x none at "
                     f"L={r['length']} (auto: {r['kernel']})",
                     r["time_vs_none"] <= PRESET_TARGETS["bias_overhead"],
                     _ratio(r["time_vs_none"])))
    if r["scheme"] == "none" and r["length"] == 1024:
      checks.append((f"causal MFU >= {100 * PRESET_TARGETS['mfu_causal']:.0f}% at L=1024 "
                     f"(none, {r['kernel']})", r["mfu_causal"] >= PRESET_TARGETS["mfu_causal"],
                     f"{100 * r['mfu_causal']:.1f}%"))
  longest = max((r["length"] for r in eval_rows), default=None)
  for r in eval_rows:
    if r["length"] == longest:
      checks.append((f"evaluation of {r['length']} tokens ({r['scheme']}, {r['kernel']}) within "
                     f"{PRESET_TARGETS['eval_memory_gib']:.0f} GiB", r["seconds"] is not None
                     and r["memory_bytes"] <= PRESET_TARGETS["eval_memory_gib"] * 2 ** 30,
                     f"{_gib(r['memory_bytes'])} GiB"))
  return checks


def context_checks(rows) -> list[tuple[str, bool, str]]:
  """The context-parallel memory target, where the rows measured it."""
  return [(f"activations per device at context=4 <= {TARGETS['context_memory']}x context=1 "
           f"(L={r['length']}, {r['exchange']}, the tiny model)",
           r["activations_vs_context_1"] <= TARGETS["context_memory"],
           _ratio(r["activations_vs_context_1"]))
          for r in rows if r["context"] == 4 and r["length"] == CONTEXT_TARGET_LENGTH
          and r["activations_vs_context_1"] is not None]
