"""Claims vs measured: what is often said about the position schemes, next to this study's figure.

Each claim reads the variants of a study (lcx.report.Variant) and returns the figure it measured
and a verdict: "supports", "does not support", or "cannot tell" when the study lacks the runs or
numbers the claim needs (a scheme not trained, peak memory not reported on this platform, or
too few retrieval trials to tell a few points apart). The
verdicts are about this study's scale only; the rule each applies is stated beside it.
"""
import dataclasses
import math
from typing import Callable

from lcx.evaluate.records import DISTANCE_BUCKETS
from lcx.report.variants import one_per_training, recipe, rope_options

SUPPORTS, REFUTES, UNKNOWN = "supports", "does not support", "cannot tell"
EXTRAPOLATES = 1.1  # "extrapolates to M x": perplexity at M x within 10% of its own at 1x
FAILS = 1.5  # "fails past the training length": perplexity at 2x over 1.5 times its 1x
FEW_POINTS = 0.1  # "a few percent worse": 0 to 10 points of exact match below
Z95 = 1.96  # a 95% interval: the difference +- 1.96 standard errors


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str
  rule: str
  measure: Callable  # variants -> (figure: str, verdict)


def _plain(variants, scheme, retrieval: bool = False):
  """The pretrained run of a scheme, evaluated as trained (no scaling, no fine-tune): of its
  evaluations, the first with perplexity at 1x (`retrieval`: with retrieval) where there are
  several (a retrieval-only one beside one at 1x-2x and one at 4x, say)."""
  found = [v for v in variants
           if v.results["scheme"] == scheme and v.finetune is None and not recipe(v.results)
           and rope_options(v.results).get("scaling", "none") == "none"
           and rope_options(v.results).get("keep", 1.0) == 1.0]
  scored = [v for v in found if (v.results.get("retrieval") if retrieval else
                                 v.at("perplexity", 1) is not None)]
  return (scored or found or [None])[0]


def _rope_variant(variants, scaling, finetuned):
  for v in variants:
    rope = rope_options(v.results)
    if rope.get("scaling") == scaling and (v.finetune is not None) == finetuned:
      return v
  return None


def _compute(variants):
  rope = _plain(variants, "rope")
  others = [v for v in one_per_training(variants)  # however often each was evaluated
            if v.finetune is None and v.results["scheme"] != "rope"]
  if rope is None or not others:
    return "needs rope and another scheme", UNKNOWN
  per_token = lambda v: 1 / v.pretrain["tokens_per_second"]
  rest = sorted(per_token(v) for v in others)
  overhead = per_token(rope) / rest[len(rest) // 2] - 1
  figure = f"rope {overhead:+.0%} time per token vs the median of {len(rest)} other schemes"
  return figure, SUPPORTS if overhead >= 0.05 else REFUTES


def _memory(variants):
  alibi, rope = _plain(variants, "alibi", True), _plain(variants, "rope", True)
  if alibi is None or rope is None:
    return "needs alibi and rope", UNKNOWN
  a, r = alibi.pretrain.get("peak_memory_bytes"), rope.pretrain.get("peak_memory_bytes")
  if not a or not r:
    return "peak memory not reported on this platform", UNKNOWN
  saving = 1 - a / r
  return f"alibi {saving:.0%} less peak memory than rope", SUPPORTS if saving >= 0.05 else REFUTES


def _longest_flat(v) -> int | None:
  """The longest multiple reached from 1x with perplexity within EXTRAPOLATES of 1x's."""
  base = v.at("perplexity", 1)
  if base is None:
    return None
  longest = 1
  for m in (2, 4, 8, 16):
    p = v.at("perplexity", m)
    if p is None or p > EXTRAPOLATES * base:
      break
    longest = m
  return longest


def _alibi_reach(variants):
  alibi = _plain(variants, "alibi")
  if alibi is None or (longest := _longest_flat(alibi)) is None:
    return "needs alibi evaluated at 1x", UNKNOWN
  figure = (f"alibi's perplexity stays within {EXTRAPOLATES - 1:.0%} of its 1x value up to "
            f"{longest}x")
  return figure, SUPPORTS if longest >= 8 else REFUTES


def _exact_1x(v) -> tuple[float, float] | None:
  """Exact match at 1x, the mean over the tasks, and its sampling variance from the trial
  counts (binomial; counts shrunk half a trial toward 50% so that 0% or 100% is not certain)."""
  tasks = [(v.retrieval(t, "exact", 1), v.retrieval_trials(t, 1)) for t in v.retrieval_tasks()]
  tasks = [(p, n) for p, n in tasks if p is not None]
  if not tasks or any(n == 0 for _, n in tasks):
    return None
  shrunk = [((p * n + 0.5) / (n + 1), n) for p, n in tasks]
  variance = sum(q * (1 - q) / n for q, n in shrunk) / len(tasks) ** 2
  return sum(p for p, _ in tasks) / len(tasks), variance


def _alibi_retrieval(variants):
  alibi, rope = _plain(variants, "alibi", True), _plain(variants, "rope", True)
  if alibi is None or rope is None:
    return "needs alibi and rope", UNKNOWN
  a, r = _exact_1x(alibi), _exact_1x(rope)
  if a is None or r is None:
    return "needs retrieval at 1x for both, with its trial count", UNKNOWN
  gap = r[0] - a[0]
  half = Z95 * math.sqrt(a[1] + r[1])
  figure = (f"exact match at 1x: alibi {a[0]:.0%}, rope {r[0]:.0%} (rope - alibi "
            f"{100 * gap:+.0f} +- {100 * half:.0f} points, 95%)")
  low, high = gap - half, gap + half
  if 0 < low and high <= FEW_POINTS:
    return figure, SUPPORTS
  if high <= 0 or low > FEW_POINTS:
    return figure, REFUTES
  return figure, UNKNOWN


def _fox_arm(fox, fox_r, alibi, rope):
  """(figure, verdict) of one FoX run against ALiBi's reach and RoPE's retrieval at 1x."""
  reach, alibi_reach = _longest_flat(fox), _longest_flat(alibi)
  f, r = _exact_1x(fox_r), _exact_1x(rope)
  if reach is None or alibi_reach is None or f is None or r is None:
    return "needs perplexity and retrieval at 1x for fox, alibi and rope", UNKNOWN
  gap, half = r[0] - f[0], Z95 * math.sqrt(f[1] + r[1])
  figure = (f"perplexity within {EXTRAPOLATES - 1:.0%} of 1x up to {reach}x for fox, "
            f"{alibi_reach}x for alibi; exact match at 1x: fox {f[0]:.0%}, rope {r[0]:.0%} (rope "
            f"- fox {100 * gap:+.0f} +- {100 * half:.0f} points, 95%)")
  return figure, REFUTES if reach < alibi_reach or gap - half > 0 else SUPPORTS


def _fox(variants):
  """Judged on the paper's FoX (gates starting at 1/2); a run whose gates started open (decay
  times set) is reported beside it."""
  alibi, rope = _plain(variants, "alibi"), _plain(variants, "rope", True)
  opened = lambda v: bool((v.results.get("scheme_options") or {}).get("decay_time_max"))
  papers = [v for v in variants if not opened(v)]
  fox, fox_r = _plain(papers, "fox"), _plain(papers, "fox", True)
  if fox is None or alibi is None or rope is None or fox_r is None:
    return "needs fox, alibi and rope", UNKNOWN
  figure, verdict = _fox_arm(fox, fox_r, alibi, rope)
  opens = [v for v in variants if opened(v)]
  open_fox, open_r = _plain(opens, "fox"), _plain(opens, "fox", True)
  if open_fox is not None and open_r is not None:
    options = open_fox.results["scheme_options"]
    figure += (f"; gates started open (decay times {options['decay_time_min']:g}-"
               f"{options['decay_time_max']:g}): {_fox_arm(open_fox, open_r, alibi, rope)[0]}")
  return figure, verdict


def _sinusoidal(variants):
  sinusoidal = _plain(variants, "sinusoidal")
  if sinusoidal is None:
    return "needs sinusoidal", UNKNOWN
  one, two = sinusoidal.at("perplexity", 1), sinusoidal.at("perplexity", 2)
  if one is None or two is None:
    return "needs sinusoidal at 1x and 2x", UNKNOWN
  figure = f"sinusoidal perplexity {one:.2f} at 1x, {two:.2f} at 2x ({two / one:.1f}x)"
  return figure, SUPPORTS if two > FAILS * one else REFUTES


def _pi_steps(variants):
  tuned, rope = _rope_variant(variants, "linear", True), _plain(variants, "rope")
  if tuned is None or rope is None:
    return "needs rope and its PI fine-tune", UNKNOWN
  multiple = rope_options(tuned.results)["factor"]
  after, base = tuned.at("perplexity", multiple), rope.at("perplexity", 1)
  if after is None or base is None:
    return f"needs the fine-tune at {multiple:g}x and rope at 1x", UNKNOWN
  steps = tuned.finetune["step"]
  zero_shot = _rope_variant(variants, "linear", False)
  before = zero_shot.at("perplexity", multiple) if zero_shot else None
  was = f"zero-shot {before:.2f}; " if before is not None else ""
  figure = (f"after {steps} steps PI reaches perplexity {after:.2f} at {multiple:g}x "
            f"({was}rope at 1x {base:.2f})")
  recovered = after <= EXTRAPOLATES * base
  # recovered in far fewer steps than claimed refutes it; not recovered in fewer is consistent
  if recovered:
    return figure, REFUTES if steps < 500 else SUPPORTS
  return figure, SUPPORTS if steps < 1000 else REFUTES


def _zero_shot(variants, scaling, at_least: float = 2.0):
  """The zero-shot variant of a RoPE scaling with the smallest factor >= at_least."""
  found = [v for v in variants if v.finetune is None
           and rope_options(v.results).get("scaling") == scaling
           and rope_options(v.results).get("factor", 1.0) >= at_least]
  return min(found, key=lambda v: rope_options(v.results)["factor"], default=None)


def _yarn_flat(variants):
  yarn, rope = _zero_shot(variants, "yarn"), _plain(variants, "rope")
  if yarn is None or rope is None:
    return "needs rope and a zero-shot YaRN with s >= 2", UNKNOWN
  base, two = rope.at("perplexity", 1), yarn.at("perplexity", 2)
  if base is None or two is None:
    return "needs rope at 1x and YaRN at 2x", UNKNOWN
  s = rope_options(yarn.results)["factor"]
  figure = (f"YaRN s={s:g} zero-shot: perplexity {two:.2f} at 2x, rope {base:.2f} at 1x "
            f"({two / base - 1:+.0%})")
  return figure, SUPPORTS if two <= EXTRAPOLATES * base else REFUTES


def _dynamic_vs_static(variants):
  dynamic, static = _zero_shot(variants, "dynamic_ntk"), _zero_shot(variants, "ntk")
  if dynamic is None or static is None:
    return "needs zero-shot dynamic and static NTK", UNKNOWN
  d, n = dynamic.at("perplexity", 2), static.at("perplexity", 2)
  if d is None or n is None:
    return "needs both at 2x", UNKNOWN
  fd, fn = (rope_options(v.results)["factor"] for v in (dynamic, static))
  figure = f"perplexity at 2x: dynamic NTK (s={fd:g}) {d:.2f}, static NTK (s={fn:g}) {n:.2f}"
  return figure, SUPPORTS if d < n else REFUTES


def _depths_exact(v, multiple) -> list[tuple[float, float, int]]:
  """(depth, exact match, trials) at a multiple, pooled over the retrieval grids."""
  pooled: dict[float, list] = {}
  for grid in v.results.get("retrieval", {}).values():
    for length, row in zip(grid["lengths"], grid["exact"]):
      if math.isclose(length / v.results["base_length"], multiple) and None not in row:
        for depth, value in zip(grid["depths"], row):
          pooled.setdefault(depth, []).append((value, grid["trials"]))
  return [(d, sum(a * n for a, n in hits) / sum(n for _, n in hits), sum(n for _, n in hits))
          for d, hits in sorted(pooled.items())]


def _yarn_crops(variants):
  """At 2x, cropping to the training length keeps only needles in the last half (depth >= 0.5):
  YaRN behaves so when it retrieves those about as well as the plain model at 1x and the earlier
  ones far worse."""
  yarn, rope = _zero_shot(variants, "yarn"), _plain(variants, "rope", retrieval=True)
  if yarn is None or rope is None:
    return "needs rope and a zero-shot YaRN with s >= 2", UNKNOWN
  at_2x, at_1x = _depths_exact(yarn, 2), _depths_exact(rope, 1)
  if not at_2x or not at_1x:
    return "needs retrieval at 2x (YaRN) and 1x (rope)", UNKNOWN
  late = [a for d, a, _ in at_2x if d >= 0.5]
  early = [a for d, a, _ in at_2x if d < 0.5]
  if not late or not early:
    return "needs depths on both sides of 0.5 at 2x", UNKNOWN
  reference = sum(a for _, a, _ in at_1x) / len(at_1x)
  late_mean, early_mean = sum(late) / len(late), sum(early) / len(early)
  figure = (f"YaRN at 2x: exact {early_mean:.0%} for needles before the last 1x window, "
            f"{late_mean:.0%} inside it (rope at 1x: {reference:.0%})")
  cropped = early_mean <= 0.5 * late_mean and late_mean >= reference - FEW_POINTS
  return figure, SUPPORTS if cropped else REFUTES


def _model(v) -> dict:
  return (v.results.get("config") or {}).get("model", {})


def _drope(variants):
  """A fine-tune that dropped the position encoding (DroPE), evaluated with its temperature."""
  for v in variants:
    m, config = _model(v), v.results.get("config") or {}
    if (v.finetune is not None and "position" in (config.get("finetune_changes") or ())
        and m.get("position") == "none" and not m.get("position_layers")):
      return v
  return None


def _rnope_swa(variants):
  """RoPE and NoPE layers, the RoPE ones local (Cohere's RNoPE-SWA), as trained."""
  for v in variants:
    m = _model(v)
    names = {str(e).partition(":")[0] for e in m.get("position_layers") or ()}
    if v.finetune is None and names == {"rope", "none"} and m.get("window"):
      return v
  return None


DROPE_ORDER = ("DroPE", "NoPE", "RNoPE-SWA", "YaRN", "RoPE")


def _drope_order(variants):
  """The DroPE paper's ordering on multi-key retrieval at 2x (its Table: 41.6 > 36.2 > 25.6 >
  0.5 > 0 for DroPE, NoPE, RNoPE-SWA, RoPE+YaRN, RoPE)."""
  arms = dict(zip(DROPE_ORDER, (_drope(variants), _plain(variants, "none", True),
                                _rnope_swa(variants), _zero_shot(variants, "yarn"),
                                _plain(variants, "rope", True))))
  missing = [name for name, v in arms.items() if v is None]
  if missing:
    return f"needs {', '.join(missing)}", UNKNOWN
  scores = {name: v.retrieval("niah_multikey", "exact", 2) for name, v in arms.items()}
  trials = {name: v.retrieval_trials("niah_multikey", 2) for name, v in arms.items()}
  if None in scores.values() or not all(trials.values()):
    return "needs niah_multikey retrieval at 2x for all five", UNKNOWN
  figure = ", ".join(f"{n} {scores[n]:.0%}" for n in DROPE_ORDER) + (
      f" (exact, niah_multikey at 2x; {min(trials.values())}+ trials each)")
  pairs = list(zip(DROPE_ORDER, DROPE_ORDER[1:]))
  if all(scores[a] > scores[b] for a, b in pairs):
    return figure, SUPPORTS

  def reversed_beyond_noise(a, b):
    se = math.sqrt(sum(scores[x] * (1 - scores[x]) / trials[x] for x in (a, b)))
    return scores[b] - scores[a] > Z95 * max(se, 1e-9)

  return figure, REFUTES if any(reversed_beyond_noise(a, b) for a, b in pairs) else UNKNOWN


def _beyond_window(v, task: str) -> tuple[float, int] | None:
  """Exact match of `task` where its farthest needed fact lies one segment back or more (past a
  window of one segment), pooled over lengths, depths and styles: (accuracy, trials)."""
  pooled = v.by_distance(task, "exact")
  cells = [pooled[b] for b in DISTANCE_BUCKETS[1:] if b in pooled]
  n = sum(t for _, t in cells)
  return (sum(a * t for a, t in cells) / n, n) if n else None


def _memory_two_facts(variants, task: str = "babi_qa2"):
  """Each memory arm against the window without memory of its scheme, on two-fact questions
  whose first fact lies beyond the window."""
  model = lambda v: (v.results.get("config") or {}).get("model", {})
  scored = [v for v in variants if _beyond_window(v, task) and not model(v).get("memory_reset")]
  windows = {v.results["scheme"]: v for v in scored
             if model(v).get("memory", "none") == "none" and model(v).get("segment_len")}
  arms = [v for v in scored if model(v).get("memory", "none") != "none"
          and v.results["scheme"] in windows]
  if not arms:
    return f"needs {task} by distance for a memory arm and its window without memory", UNKNOWN
  rows = []
  for arm in arms:
    (p, n), (q, m) = _beyond_window(arm, task), _beyond_window(windows[arm.results["scheme"]],
                                                               task)
    shrink = lambda x, k: (x * k + 0.5) / (k + 1)
    half = Z95 * math.sqrt(shrink(p, n) * (1 - shrink(p, n)) / n
                           + shrink(q, m) * (1 - shrink(q, m)) / m)
    rows.append((p - q, half, f"{model(arm)['memory']} {p:.0%} of {n} vs {q:.0%} of {m}"))
  figure = (f"exact match on {task} with its first fact a segment or more back: "
            + "; ".join(text for _, _, text in rows) + " (memory arm vs its window)")
  # whether the task was learned at all: a model attending over its whole training length
  full = [v for v in variants if not model(v).get("segment_len") and v.retrieval(task, "exact", 1)
          is not None]
  if full:
    figure += (f"; the full-length model at 1x: {full[0].retrieval(task, 'exact', 1):.0%} of "
               f"{full[0].retrieval_trials(task, 1)}")
  if any(gap - half > 0 for gap, half, _ in rows):
    return figure, SUPPORTS
  if all(gap + half < FEW_POINTS for gap, half, _ in rows):
    return figure, REFUTES
  return figure, UNKNOWN


CLAIMS = (
    Claim("RoPE costs 10-15% more compute than the alternatives",
          "supports when rope's time per token is >= 5% above the median other scheme", _compute),
    Claim("ALiBi uses 7-12% less memory", "supports when alibi's peak memory is >= 5% below "
          "rope's", _memory),
    Claim("ALiBi extrapolates to about 8x", "supports when alibi's perplexity stays within 10% of "
          "its 1x value up to >= 8x", _alibi_reach),
    Claim("ALiBi is a few percent worse than RoPE at retrieving precise positions",
          "supports when the 95% interval of rope's minus alibi's exact match at 1x (from the "
          "trial counts) lies within 0-10 points, does not when it lies outside them, cannot tell "
          "when it straddles", _alibi_retrieval),
    Claim("FoX extrapolates like ALiBi in perplexity while retrieving at least as well as RoPE "
          "at 1x", "supports when fox's perplexity stays within 10% of its 1x value as far as "
          "alibi's does (or farther) and rope's exact match at 1x is not above fox's beyond the "
          "95% interval of the difference (from the trial counts); does not support otherwise. "
          "Judged on the paper's gates (starting at 1/2); gates started open are shown beside",
          _fox),
    Claim("Sinusoidal positions fail past the training length",
          "supports when perplexity at 2x is over 1.5 times that at 1x", _sinusoidal),
    Claim("PI needs about 1,000 fine-tuning steps", "supports when PI has not recovered (within "
          "10% of rope at 1x) in fewer steps, or recovers only after >= 500", _pi_steps),
    Claim("YaRN keeps perplexity flat to 2x zero-shot", "supports when the zero-shot YaRN with "
          "the smallest s >= 2 has perplexity at 2x within 10% of rope's at 1x", _yarn_flat),
    Claim("Dynamic NTK beats static NTK at 2x", "supports when zero-shot dynamic NTK's perplexity "
          "at 2x is below static NTK's (each with its smallest s >= 2)", _dynamic_vs_static),
    Claim("Zero-shot YaRN retrieves like cropping the context to the training length",
          "supports when, at 2x, YaRN's exact match for needles before the last 1x window is at "
          "most half of that inside it, and inside it within 10 points of rope's at 1x",
          _yarn_crops),
    Claim("A memory arm answers two-fact questions beyond its window",
          "supports when some memory arm's exact match on babi_qa2 (bAbI's two supporting facts)"
          " with the first fact a segment or more back is above its window-without-memory's "
          "beyond the 95% interval (from the trial counts); does not when every arm's interval "
          "lies below a 10-point gain; cannot tell otherwise", _memory_two_facts),
    Claim("On multi-key retrieval at 2x: DroPE > NoPE > RNoPE-SWA > RoPE+YaRN > RoPE",
          "supports when the five arms' exact match on niah_multikey at 2x falls in this order; "
          "does not when a neighbouring pair is reversed beyond its 95% interval (from the trial "
          "counts); cannot tell otherwise", _drope_order),
)


def _on_evaluation_space(v) -> bool:
  """Whether an evaluation drew its keys, values and entities from evaluation's space (not
  `--retrieval_space=train`'s: a look at what a model learned, no test of the skill)."""
  return (v.results.get("eval_options") or {}).get("retrieval_space", "eval") == "eval"


def claims_table(variants) -> list[str]:
  """Markdown lines: each claim, the study's figure, the verdict and the rule behind it, judged
  on evaluation's keys, values and entities only."""
  lines = ["| claim | measured here | verdict | rule |", "| --- | --- | --- | --- |"]
  variants = [v for v in variants if _on_evaluation_space(v)]
  for claim in CLAIMS:
    figure, verdict = claim.measure(variants)
    lines.append(f"| {claim.text} | {figure} | {verdict} | {claim.rule} |")
  return lines
