"""LongRoPE's search (Ding et al., 2024): the rescale factor of each rotary pair that extends a
RoPE run to s times its training length, found by an evolutionary search over perplexity there.

A candidate is a table lambda (one factor per rotary pair: theta'_i = theta_i / lambda_i), kept
non-decreasing in the pair index (the paper's constraint: slower dims are interpolated at least
as much as faster ones) and within [1, 2s]. The first population holds the tables that give the
closed-form methods (PI: lambda_i = s; NTK: s^(2i / (d - 2)); YaRN's NTK-by-parts) and mutations
of them; each generation keeps the best half and adds mutations and crossovers of it. The fitness
is the perplexity of the same non-overlapping windows of s x L tokens of a split, scored with
model.rope.scaling=longrope and that table as long_factor; since the seeds are scored and the best
is always kept, the result is never worse than PI, NTK or YaRN on those windows.

The result (RUN/longrope/s<factor>.json) holds the table, its perplexity against the seeds', and
the `--config.model.rope.*` overrides that use it (lcx.evaluate, a fine-tune, a study stage).
"""
import dataclasses
import json
import pathlib

import numpy as np
import tqdm

from lcx.evaluate.loading import load_run
from lcx.evaluate.variants import VariantPerplexity
from lcx.files import write_atomic
from lcx.positions.rope import ntk_base, rotary_dim, yarn_ramp


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  factor: float  # s: the search scores windows of s x the training length
  population: int = 8
  generations: int = 4
  tokens: int = 16384  # target tokens scored per candidate
  split: str = "validation"
  seed: int = 0

  def __post_init__(self):
    for flag, value, low in (("factor", self.factor, 1.0), ("population", self.population, 3),
                             ("generations", self.generations, 1), ("tokens", self.tokens, 1)):
      if not value >= low:
        raise ValueError(f"--{flag}={value} must be at least {low}")


def seed_tables(pairs: int, factor: float, base: float, original_length: int) -> dict:
  """The tables of the closed-form methods, by name (each non-decreasing, in [1, s])."""
  d = 2 * pairs
  ntk = (np.asarray(base ** (-np.arange(pairs) * 2 / d)) /
         np.asarray(ntk_base(base, factor, d) ** (-np.arange(pairs) * 2 / d)))
  gamma = np.asarray(yarn_ramp(d, base, original_length, 32.0, 1.0))
  return {"pi": np.full(pairs, float(factor)), "ntk": ntk,
          "yarn": 1.0 / (gamma + (1.0 - gamma) / factor)}


def constrain(table: np.ndarray, factor: float) -> np.ndarray:
  """Non-decreasing in the pair index, within [1, 2s]."""
  return np.maximum.accumulate(np.clip(table, 1.0, 2.0 * factor))


def mutate(table: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
  """About a third of the factors scaled by e^N(0, 0.2)."""
  hit = rng.random(table.shape) < 1 / 3
  return constrain(table * np.exp(np.where(hit, rng.normal(0.0, 0.2, table.shape), 0.0)), factor)


def crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
  return constrain(np.where(rng.random(a.shape) < 0.5, a, b), factor)


class _Fitness:
  """Perplexity at s x the training length under a long_factor table."""

  def __init__(self, workdir, options: SearchOptions):
    run = load_run(workdir)
    c = run.config
    if c.model.position != "rope" or c.model.get("position_layers"):
      raise ValueError(f"{workdir}: model.position={c.model.position!r}"
                       f"{' with a per-layer pattern' if c.model.get('position_layers') else ''}; "
                       "LongRoPE's search needs a RoPE run with one scheme in every layer")
    self.rope = run.model.cfg.position_options
    self.original_length = int(self.rope.original_length)
    self.pairs = rotary_dim(run.model.cfg.head_dim, self.rope.fraction) // 2
    self.factor = options.factor
    self.perplexity = VariantPerplexity(workdir, int(round(options.factor * self.original_length)),
                                        options.tokens, options.split, run=run)
    self.length = self.perplexity.length

  def __call__(self, table) -> float:
    return self.perplexity(position_options=dataclasses.replace(
        self.rope, scaling="longrope", factor=float(self.factor), short_factor=(),
        long_factor=tuple(float(x) for x in table)))


def search(workdir, options: SearchOptions, progress: bool = True) -> tuple[dict, pathlib.Path]:
  """Runs the search on RUN; returns (the result, the file it was written to)."""
  fitness = _Fitness(workdir, options)
  rng = np.random.default_rng(options.seed)
  seeds = seed_tables(fitness.pairs, options.factor, fitness.rope.base, fitness.original_length)
  population = [constrain(t, options.factor) for t in seeds.values()]
  while len(population) < options.population:
    population.append(mutate(population[len(population) % len(seeds)], rng, options.factor))
  elite = max(2, options.population // 2)
  total = options.population + (options.generations - 1) * (options.population - elite)
  bar = tqdm.tqdm(total=total, desc=f"longrope s={options.factor:g}", unit="candidate",
                  disable=not progress)
  scored: list[tuple[float, np.ndarray]] = []
  seed_ppl = {}
  for generation in range(options.generations):
    for table in population:
      value = fitness(table)
      scored.append((value, table))
      bar.update(1)
      bar.set_postfix(best=f"{min(v for v, _ in scored):.3f}")
    if generation == 0:
      seed_ppl = {name: scored[i][0] for i, name in enumerate(seeds)}
    scored.sort(key=lambda pair: pair[0])
    scored = scored[:elite]  # kept, and not scored again
    parents = [t for _, t in scored]
    population = []
    while len(population) < options.population - len(parents):
      a, b = rng.choice(len(parents), 2, replace=False)
      child = crossover(parents[a], parents[b], rng, options.factor) if rng.random() < 0.5 else (
          mutate(parents[a], rng, options.factor))
      population.append(child)
  bar.close()
  best_ppl, best = scored[0]
  table = [round(float(x), 6) for x in best]
  result = {
      "run": str(workdir), "factor": options.factor, "length": fitness.length,
      "original_length": fitness.original_length, "split": options.split,
      "tokens": fitness.perplexity.tokens,
      "population": options.population, "generations": options.generations,
      "seed": options.seed, "perplexity": best_ppl, "seed_perplexity": seed_ppl,
      "long_factor": table,
      "overrides": ["model.rope.scaling=longrope", f"model.rope.factor={options.factor:g}",
                    f"model.rope.long_factor=({','.join(map(str, table))},)"],
  }
  path = pathlib.Path(workdir).expanduser() / "longrope" / f"s{options.factor:g}.json"
  path.parent.mkdir(exist_ok=True)
  write_atomic(path, json.dumps(result, indent=2) + "\n")
  return result, path
