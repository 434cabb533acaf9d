"""python -m lcx.longrope search --workdir RUN --factor S [--population 8 --generations 4
  --tokens 16384 --split validation --seed 0]

Finds LongRoPE's long_factor table for RUN at S times its training length (lcx.longrope) and
writes RUN/longrope/s<S>.json; prints the --config.model.rope.* overrides that use it.
"""
import shlex
import sys

from absl import flags

from lcx import cli
from lcx.config import ConfigError
from lcx.longrope import SearchOptions, search

_WORKDIR = flags.DEFINE_string("workdir", None, "The RoPE run to extend.")
_FACTOR = flags.DEFINE_float("factor", None, "s: the search scores windows of s x the training "
                             "length.")
_POPULATION = flags.DEFINE_integer("population", 8, "Candidates per generation.")
_GENERATIONS = flags.DEFINE_integer("generations", 4, "Generations.")
_TOKENS = flags.DEFINE_integer("tokens", 16384, "Target tokens scored per candidate.")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test", "train"],
                           "The split whose windows are scored.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the mutations and crossovers.")


def main(argv, overrides):
  cli.quiet_library_logs()
  if len(argv) != 2 or argv[1] != "search" or overrides:
    sys.exit("lcx.longrope: usage: python -m lcx.longrope search --workdir RUN --factor S")
  if not _WORKDIR.value or _FACTOR.value is None:
    sys.exit("lcx.longrope: --workdir RUN and --factor S are required")
  try:
    options = SearchOptions(factor=_FACTOR.value, population=_POPULATION.value,
                            generations=_GENERATIONS.value, tokens=_TOKENS.value,
                            split=_SPLIT.value, seed=_SEED.value)
    result, path = search(_WORKDIR.value, options)
  except (ConfigError, ValueError) as e:
    sys.exit(f"lcx.longrope: {e}")
  except OSError as e:
    sys.exit(f"lcx.longrope: {cli.os_error(e)}")
  seeds = ", ".join(f"{k} {v:.4f}" for k, v in result["seed_perplexity"].items())
  print(f"\nperplexity at {result['length']} tokens: LongRoPE {result['perplexity']:.4f} "
        f"(seeds: {seeds})\nwritten: {path}\nuse it with:\n  "
        + " ".join(shlex.quote(f"--config.{o}") for o in result["overrides"]))


if __name__ == "__main__":
  cli.run(main)
