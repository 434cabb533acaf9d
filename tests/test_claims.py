"""Claims vs measured: each claim's figure and verdict from hand-written study results."""
import dataclasses

from lcx.report import claims, variants
from lcx.report import Variant


def _variant(scheme, ppl, *, tokens_per_second=1000.0, memory=None, exact=None, trials=1000,
             scaling="none", factor=1.0, finetune_steps=None):
  perplexity = [{"multiple": m, "perplexity": p} for m, p in zip((1, 2, 4, 8, 16), ppl)]
  retrieval = {}
  if exact is not None:
    retrieval["passkey/python"] = {"task": "passkey", "style": "python", "lengths": [100],
                                   "depths": [0.0, 1.0], "trials": trials,
                                   "exact": [[exact, exact]], "ranked": [[exact, exact]],
                                   "longest_at_90": None}
  results = {"run": f"runs/{scheme}-{scaling}-{factor}-{finetune_steps}/pretrain",
             "scheme": scheme, "rope": {"scaling": scaling, "factor": factor},
             "base_length": 100, "perplexity": perplexity, "sliding": [], "retrieval": retrieval}
  pretrain = {"tokens_per_second": tokens_per_second, "peak_memory_bytes": memory}
  finetune = {"step": finetune_steps} if finetune_steps else None
  return Variant(scheme, results, pretrain, finetune)


def test_claims_read_the_study_and_apply_their_rules():
  study = [
      _variant("rope", [10, 30, 90, 200, 400], tokens_per_second=880, memory=100, exact=0.9),
      _variant("alibi", [11, 11.5, 11.8, 12, 14], tokens_per_second=1000, memory=90, exact=0.85),
      _variant("none", [12, 20, 40, 80, 100], tokens_per_second=1010),
      _variant("sinusoidal", [11, 40, 99, 99, 99], tokens_per_second=990),
      _variant("rope", [40, 40, 45, 99, 99], scaling="linear", factor=4.0),
      _variant("rope", [10.5, 10.6, 10.8, 30, 90], scaling="linear", factor=4.0,
               finetune_steps=200),
  ]
  measured = {c.measure.__name__: c.measure(study) for c in claims.CLAIMS}
  assert measured["_compute"] == ("rope +14% time per token vs the median of 3 other schemes",
                                  claims.SUPPORTS)
  assert measured["_memory"] == ("alibi 10% less peak memory than rope", claims.SUPPORTS)
  assert measured["_alibi_reach"][1] == claims.SUPPORTS and "up to 8x" in measured["_alibi_reach"][0]
  # 2,000 trials each: 5 +- 2 points, inside 0-10
  assert measured["_alibi_retrieval"] == (
      "exact match at 1x: alibi 85%, rope 90% (rope - alibi +5 +- 2 points, 95%)", claims.SUPPORTS)
  assert measured["_sinusoidal"][1] == claims.SUPPORTS
  # PI back within 10% of rope's 1x after 200 steps: fewer than the claimed 1,000
  assert measured["_pi_steps"] == (
      "after 200 steps PI reaches perplexity 10.80 at 4x (zero-shot 45.00; rope at 1x 10.00)",
      claims.REFUTES)
  lines = claims.claims_table(study)
  assert len(lines) == 2 + len(claims.CLAIMS) and "| RoPE costs 10-15% more compute" in lines[2]
  # a training evaluated twice (say, again on training's entities) is one scheme's cost
  again = dataclasses.replace(study[2], label="none (train space)")
  assert claims.CLAIMS[0].measure([*study, again]) == measured["_compute"]
  # an evaluation on training's keys (a look at what was learned) is no claim's evidence
  learned = dataclasses.replace(study[1], results={
      **study[1].results, "eval_options": {"retrieval_space": "train"},
      "retrieval": {"passkey/python": {**study[1].results["retrieval"]["passkey/python"],
                                       "exact": [[0.0, 0.0]], "ranked": [[0.0, 0.0]]}}})
  assert claims.claims_table([learned, *study]) == lines


def test_results_with_ropes_options_as_its_schemes_read_as_those_written_before():
  """Evaluations now carry model.rope as the RoPE scheme's options ("scheme_options") and not at
  all for other schemes; a study mixing them with older results labels and judges them alike."""
  def today(variant):
    results = dict(variant.results)
    rope = results.pop("rope")
    results["scheme_options"] = rope if results["scheme"] == "rope" else None
    return dataclasses.replace(variant, results=results)
  study = [_variant("rope", [10, 30, 90, 200, 400]), _variant("alibi", [11, 11.5, 11.8, 12, 14]),
           _variant("rope", [40, 40, 45, 99, 99], scaling="linear", factor=4.0),
           _variant("rope", [10.5, 10.6, 10.8, 30, 90], scaling="linear", factor=4.0,
                    finetune_steps=200)]
  new = [today(v) for v in study]
  assert "rope" not in new[0].results and new[1].results["scheme_options"] is None
  label = lambda v: variants.label(v.results, v.finetune is not None)
  assert [label(v) for v in new] == [label(v) for v in study]
  assert label(new[3]) == "rope FT linear x4"
  for claim in claims.CLAIMS:
    assert claim.measure(new) == claim.measure(study)


def test_claims_the_study_cannot_judge_say_so():
  study = [_variant("rope", [10, 30, 90, 200, 400]),
           _variant("alibi", [11, 30, 90, 200, 400], exact=0.5)]
  measured = {c.measure.__name__: c.measure(study) for c in claims.CLAIMS}
  assert measured["_memory"] == ("peak memory not reported on this platform", claims.UNKNOWN)
  assert measured["_sinusoidal"] == ("needs sinusoidal", claims.UNKNOWN)
  assert measured["_alibi_retrieval"] == ("needs retrieval at 1x for both, with its trial count",
                                          claims.UNKNOWN)
  assert measured["_pi_steps"][1] == claims.UNKNOWN
  assert measured["_alibi_reach"] == ("alibi's perplexity stays within 10% of its 1x value up to "
                                      "1x", claims.REFUTES)


def test_the_retrieval_claim_weighs_the_number_of_trials():
  """The same 5-point gap supports the claim with thousands of trials and cannot be told with the
  CPU study's 9; a gap far outside 0-10 points refutes it even with few."""
  judge = lambda rope, alibi, trials: claims._alibi_retrieval([
      _variant("rope", [10] * 5, exact=rope, trials=trials),
      _variant("alibi", [10] * 5, exact=alibi, trials=trials)])
  assert judge(0.90, 0.85, 1000)[1] == claims.SUPPORTS
  few = judge(0.90, 0.85, 4)  # 8 trials each: the interval reaches below 0 and above 10
  assert few[1] == claims.UNKNOWN and "+5 +- 36" in few[0]
  assert judge(0.95, 0.30, 10)[1] == claims.REFUTES  # 65 points apart
  assert judge(0.50, 0.60, 1000)[1] == claims.REFUTES  # alibi better, measured tightly
  # every trial right for both: the half-trial shrinkage keeps the interval from vanishing
  assert judge(1.0, 1.0, 3)[1] == claims.UNKNOWN


def test_the_context_extension_claims_on_a_pretrained_models_variants():
  """The pretrained study's claims (experiments/pretrained.py): each reads the zero-shot variant
  with the smallest factor >= 2, and YaRN's retrieval at 2x by depth."""
  def with_depths(variant, multiple, by_depth):
    depths = sorted(by_depth)
    grid = {"task": "passkey", "style": "python", "lengths": [int(100 * multiple)],
            "depths": depths, "trials": 5, "exact": [[by_depth[d] for d in depths]],
            "ranked": [[by_depth[d] for d in depths]], "longest_at_90": None}
    results = {**variant.results, "retrieval": {"passkey/python": grid}}
    return dataclasses.replace(variant, results=results)
  rope = with_depths(_variant("rope", [10, 30, 90, 200, 400]), 1, {0.0: 1.0, 0.5: 1.0, 1.0: 0.8})
  study = [rope,
           with_depths(_variant("rope", [10.2, 10.8, 40, 99, 99], scaling="yarn", factor=2.0), 2,
                       {0.0: 0.0, 0.25: 0.2, 0.5: 0.8, 1.0: 1.0}),
           _variant("rope", [10.1, 11, 12, 99, 99], scaling="yarn", factor=4.0),
           _variant("rope", [10, 11.5, 30, 99, 99], scaling="dynamic_ntk", factor=2.0),
           _variant("rope", [10.4, 12.5, 30, 99, 99], scaling="ntk", factor=2.0)]
  assert claims._yarn_flat(study) == (
      "YaRN s=2 zero-shot: perplexity 10.80 at 2x, rope 10.00 at 1x (+8%)", claims.SUPPORTS)
  assert claims._dynamic_vs_static(study) == (
      "perplexity at 2x: dynamic NTK (s=2) 11.50, static NTK (s=2) 12.50", claims.SUPPORTS)
  assert claims._yarn_crops(study) == (
      "YaRN at 2x: exact 10% for needles before the last 1x window, 90% inside it (rope at 1x: "
      "93%)", claims.SUPPORTS)
  # no retrieval beyond 1x (the CPU parts): the claim cannot be judged
  assert claims._yarn_crops([rope, _variant("rope", [10] * 5, scaling="yarn", factor=2.0)])[1] == (
      claims.UNKNOWN)
  assert claims._dynamic_vs_static(study[:3])[1] == claims.UNKNOWN


def _recipe_variant(scheme, exact, *, model=None, config=None, finetuned=False, scaling="none",
                    factor=1.0, trials=50):
  results = {"scheme": scheme, "rope": {"scaling": scaling, "factor": factor}, "base_length": 100,
             "perplexity": [], "sliding": [],
             "config": {"model": {"position": scheme, **(model or {})}, **(config or {})},
             "retrieval": {"niah_multikey/python": {
                 "task": "niah_multikey", "style": "python", "lengths": [100, 200],
                 "depths": [0.0, 1.0], "trials": trials, "exact": [[1.0, 1.0], [exact, exact]],
                 "ranked": [[1.0, 1.0], [exact, exact]], "longest_at_90": None}}}
  return Variant(variants.label(results, finetuned), results, {"tokens_per_second": 1.0},
                 {"step": 10} if finetuned else None)


def _drope_study(drope, nope, swa, yarn, rope):
  return [
      _recipe_variant("none", drope, finetuned=True,
                      model={"qk_norm": True, "temperature": {"kind": "drope"}},
                      config={"finetune_changes": ["position", "position_layers", "qk_norm"]}),
      _recipe_variant("none", nope),
      _recipe_variant("rope", swa, model={"position_layers": ["rope", "none"], "window": 32,
                                          "attention_layers": ["local", "global"]}),
      _recipe_variant("rope", yarn, scaling="yarn", factor=2.0),
      _recipe_variant("rope", rope),
  ]


def test_the_drope_papers_ordering_is_read_from_the_five_arms():
  measure = lambda study: claims._drope_order(study)
  figure, verdict = measure(_drope_study(0.42, 0.36, 0.26, 0.05, 0.0))
  assert verdict == claims.SUPPORTS and figure.startswith("DroPE 42%, NoPE 36%, RNoPE-SWA 26%")
  assert measure(_drope_study(0.0, 0.36, 0.26, 0.05, 0.9))[1] == claims.REFUTES
  assert measure(_drope_study(0.30, 0.32, 0.26, 0.05, 0.0))[1] == claims.UNKNOWN  # within noise
  assert measure(_drope_study(0.4, 0.3, 0.2, 0.1, 0.0)[1:]) == ("needs DroPE", claims.UNKNOWN)
  labels = [v.label for v in _drope_study(0.4, 0.3, 0.2, 0.1, 0.0)]
  assert labels == ["none qk-norm temperature drope FT", "none",
                    "rope+none window 32 (local/global)", "rope zero-shot yarn x2", "rope"]


def test_the_fox_claim_needs_alibis_reach_and_ropes_retrieval_both():
  alibi = _variant("alibi", [11, 11.5, 11.8, 12, 14])  # flat to 8x
  rope = _variant("rope", [10, 30, 90, 200, 400], exact=0.9, trials=100)
  judge = lambda ppl, exact: claims._fox([alibi, rope, _variant("fox", ppl, exact=exact,
                                                                trials=100)])
  flat = [10, 10.2, 10.5, 10.8, 11.5]  # to 8x as alibi, 16x beyond 10%
  figure, verdict = judge(flat, 0.88)
  assert verdict == claims.SUPPORTS
  assert figure.startswith("perplexity within 10% of 1x up to 8x for fox, 8x for alibi; exact "
                           "match at 1x: fox 88%, rope 90% (rope - fox +2 +- ")
  assert judge([10, 10.2, 12, 30, 90], 0.9)[1] == claims.REFUTES  # reaches 2x only
  assert judge(flat, 0.5)[1] == claims.REFUTES  # retrieves far worse than rope
  assert claims._fox([alibi, rope]) == ("needs fox, alibi and rope", claims.UNKNOWN)
  # a run whose gates started open is shown beside the paper's, which alone is judged
  opened = _variant("fox", flat, exact=0.9, trials=100)
  opened.results["scheme_options"] = {"decay_time_min": 2.0, "decay_time_max": 2048.0}
  figure, verdict = claims._fox([alibi, rope, _variant("fox", flat, exact=0.5, trials=100),
                                 opened])
  assert verdict == claims.REFUTES and "fox 50%" in figure
  assert "; gates started open (decay times 2-2048): perplexity within 10% of 1x up to 8x for " \
         "fox, 8x for alibi; exact match at 1x: fox 90%" in figure


def test_effective_length_keeps_85_percent_of_the_variants_own_1x_score():
  """NoLiMa's effective length: the longest multiple up to which exact match stays at or above
  85% of the variant's own 1x (a weak model's 40% at 1x counts, where 90% never would), with
  the trials behind it; a dip below ends it even if a longer length recovers."""
  from lcx.report.tables import retrieval_tables
  def grid(exact):
    return {"babi_qa1/prose": {"task": "babi_qa1", "style": "prose",
                               "lengths": [100, 200, 400, 800], "depths": [0.5], "trials": 20,
                               "exact": [[e] for e in exact], "ranked": [[e] for e in exact],
                               "longest_at_90": None}}
  def variant(exact):
    results = {"scheme": "alibi", "base_length": 100, "perplexity": [], "sliding": [],
               "retrieval": grid(exact)}
    return Variant("alibi", results, {}, None)
  assert variant([0.4, 0.36, 0.33, 0.4]).effective_length("babi_qa1") == 2  # 0.33 < 0.34
  assert variant([0.4, 0.34, 0.4, 0.4]).effective_length("babi_qa1") == 8
  assert variant([0.0, 0.0, 0.0, 0.0]).effective_length("babi_qa1") is None
  table = "\n".join(retrieval_tables([variant([0.4, 0.36, 0.33, 0.4])]))
  assert "| 2x (20 / 20 trials) | n/a |" in table and "effective length" in table
  assert "n/a (0% at 1x)" in "\n".join(retrieval_tables([variant([0.0] * 4)]))


def test_a_memory_arm_answering_two_fact_questions_beyond_its_window_is_told_from_noise():
  def arm(memory, beyond, trials=60, scheme="rope"):
    distances = {"0": {"exact": 0.9, "ranked": 0.9, "trials": trials},
                 "1": {"exact": beyond, "ranked": beyond, "trials": trials},
                 "2": {"exact": beyond, "ranked": beyond, "trials": trials}}
    results = {"scheme": scheme, "base_length": 256, "perplexity": [], "sliding": [],
               "config": {"model": {"memory": memory, "segment_len": 64}},
               "retrieval": {"babi_qa2/python": {
                   "task": "babi_qa2", "style": "python", "lengths": [256], "depths": [0.5],
                   "trials": trials, "exact": [[0.5]], "ranked": [[0.5]], "longest_at_90": None,
                   "by_distance": {"unit": 64, "distances": distances}}}}
    return Variant(memory, results, {}, None)
  measure = claims._memory_two_facts
  figure, verdict = measure([arm("none", 0.05), arm("xl", 0.4), arm("knn", 0.1)])
  assert verdict == claims.SUPPORTS and "xl 40% of 120 vs 5% of 120" in figure
  assert measure([arm("none", 0.05), arm("xl", 0.05)])[1] == claims.REFUTES
  assert measure([arm("none", 0.05, 5), arm("xl", 0.2, 5)])[1] == claims.UNKNOWN  # few trials
  assert measure([arm("xl", 0.4)])[1] == claims.UNKNOWN  # no window to read it against
