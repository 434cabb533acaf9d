"""The retrieval suite on a length x depth grid, scored two ways:
  exact   greedy decoding produces the answer (the real test; RULER's all-or-nothing match);
  ranked  the true answer is likelier than each of N wrong answers of the same form (chance
          1 / (N + 1)), which still moves when a model is too weak to produce the answer.
Trials are generated from the evaluation split (lcx.data.retrieval) with keys and values from the
evaluation space, deterministically from the seed.
"""
import zlib

import numpy as np

from lcx.data import retrieval
from lcx.evaluate.decode import Decoder


def _rng(seed: int, task: str, style: str, length: int, depth: float) -> np.random.Generator:
  """One stream per cell, so a cell's trials do not change when the grid around it does."""
  return np.random.default_rng([seed, zlib.crc32(f"{task}/{style}".encode()), length,
                                int(round(depth * 1e6))])


def score_trials(decoder: Decoder, tokenizer, trials: list[retrieval.Trial]) -> tuple[list, list]:
  """(exact match of greedy decoding, whether the true answer ranks first) per trial. An answer
  in a fixed order is exact when teacher forcing reproduces it (what greedy decoding would emit);
  an unordered one is decoded, since another order is right too.

  Trials of one length run as one batch whatever their answers' lengths (a bAbI place's name
  varies, and with it the prompt's length): the prompts are read up to the shortest one's end,
  and each candidate answer is scored after the rest of its prompt, whose tokens are read but
  not counted (masked). One compilation per length, not per answer length."""
  exact, ranked = [False] * len(trials), [False] * len(trials)
  groups: dict[int, list[int]] = {}
  for i, t in enumerate(trials):
    groups.setdefault(len(t.prompt) + len(t.answer), []).append(i)
  for rows in groups.values():
    common = min(len(trials[i].prompt) for i in rows)
    prompts = np.stack([trials[i].prompt[:common] for i in rows])
    tails = [trials[i].prompt[common:] for i in rows]
    candidates = [[trials[i].answer, *trials[i].alternatives] for i in rows]
    width = max(len(tail) + len(a) for tail, c in zip(tails, candidates) for a in c)
    answers = np.zeros((len(rows), len(candidates[0]), width), np.int32)
    mask = np.zeros(answers.shape, np.float32)
    for r, (tail, c) in enumerate(zip(tails, candidates)):
      for m, a in enumerate(c):
        answers[r, m, :len(tail) + len(a)] = np.concatenate([tail, a])
        mask[r, m, len(tail):len(tail) + len(a)] = 1
    logprobs, forced = decoder.answer_scores(prompts, answers, mask)
    decoded = _decoded(decoder, {i: trials[i] for r, i in enumerate(rows)
                                 if not trials[i].ordered and not forced[r, 0]})
    for r, i in enumerate(rows):
      exact[i] = bool(forced[r, 0]) or (
          i in decoded and trials[i].accepts(tokenizer.decode(decoded[i])))
      ranked[i] = bool(logprobs[r, 0] > logprobs[r, 1:].max())
  return exact, ranked


def _decoded(decoder: Decoder, trials: dict[int, retrieval.Trial]) -> dict[int, np.ndarray]:
  """Greedy decoding after each trial's whole prompt (index -> as many tokens as its answer
  has), prompts of one shape a batch."""
  out, groups = {}, {}
  for i, t in trials.items():
    groups.setdefault((len(t.prompt), len(t.answer)), []).append(i)
  for (_, steps), group in groups.items():
    generated = decoder.greedy(np.stack([trials[i].prompt for i in group]), steps)
    out.update(zip(group, generated))
  return out


def needle_distance(trial: retrieval.Trial, unit: int) -> int:
  """How many segments of `unit` tokens back from the question's last token (the one that
  predicts the answer) the farthest needle the answer needs lies whole, segments counted from
  the prompt's start as a model streaming segments cuts them: 0 when a needle ends in the
  question's own segment (a window without memory sees at least part of it)."""
  return (len(trial.prompt) - 1) // unit - (min(trial.needle_ends) - 1) // unit


def by_distance(trials, exact, ranked, unit: int) -> dict:
  """Accuracy per needle distance in segments, pooled over lengths and depths: distance ->
  {exact, ranked, trials}."""
  pooled: dict[int, list] = {}
  for t, e, r in zip(trials, exact, ranked):
    pooled.setdefault(needle_distance(t, unit), []).append((e, r))
  return {"unit": unit, "distances": {
      str(d): {"exact": float(np.mean([e for e, _ in hits])),
               "ranked": float(np.mean([r for _, r in hits])), "trials": len(hits)}
      for d, hits in sorted(pooled.items())}}


def retrieval_grid(decoder: Decoder, tokenizer, task: str, style: str, lengths, depths,
                   trials: int, text: retrieval.TextHaystack, *, seed: int = 0,
                   params: retrieval.TaskParams = retrieval.TaskParams(),
                   not_applicable: dict[int, str] | None = None, progress=None,
                   distance_unit: int = 0, space: str = retrieval.EVAL) -> dict:
  """Accuracy (exact and ranked) per (length, depth) cell over `trials` trials each. Lengths in
  not_applicable, or too short for the task, get None cells and their reason. With a
  distance_unit (a memory run's segment length), also accuracy by the needle's distance in
  segments (`by_distance`). `space`: the keys, values and entities' (retrieval.TRAIN: those
  the training mixture draws from, to tell a skill learned on familiar words from one that
  carries to new ones)."""
  not_applicable = dict(not_applicable or {})
  shortest = retrieval.minimum_length(tokenizer, task, style, params)
  for n in lengths:
    if n < shortest and n not in not_applicable:
      not_applicable[n] = f"the {task} ({style}) prompt needs {shortest} tokens"
  haystack = retrieval.default_haystack(task, style, text, tokenizer)
  exact, ranked = [], []
  scored = ([], [], [])  # every trial scored, its exact match and its rank, for by_distance
  for length in lengths:
    if length in not_applicable:
      exact.append([None] * len(depths))
      ranked.append([None] * len(depths))
      if progress is not None:
        progress(length, len(depths))
      continue
    cells = []
    for depth in depths:
      rng = _rng(seed, task, style, length, depth)
      cells += [retrieval.build_trial(tokenizer, task, style, length, depth, rng, haystack,
                                      space=space, params=params) for _ in range(trials)]
    hits, firsts = score_trials(decoder, tokenizer, cells)  # every depth in one batch
    for pool, items in zip(scored, (cells, hits, firsts)):
      pool.extend(items)
    exact.append([float(np.mean(hits[d * trials:(d + 1) * trials])) for d in range(len(depths))])
    ranked.append([float(np.mean(firsts[d * trials:(d + 1) * trials]))
                   for d in range(len(depths))])
    if progress is not None:
      progress(length, len(depths))
  grid = {"task": task, "style": style, "lengths": list(lengths), "depths": list(depths),
          "trials": trials, "exact": exact, "ranked": ranked, "space": space,
          "chance": 1 / (params.distractors + 1),
          "longest_at_90": longest_at(lengths, exact, 0.9),
          "not_applicable": {str(k): v for k, v in not_applicable.items()}}
  if distance_unit:
    grid["by_distance"] = by_distance(*scored, distance_unit)
  return grid


def longest_at(lengths, accuracy, threshold: float) -> int | None:
  """The longest length whose accuracy, averaged over depths, is at least threshold."""
  good = [n for n, row in zip(lengths, accuracy)
          if None not in row and np.mean(row) >= threshold]
  return max(good) if good else None
