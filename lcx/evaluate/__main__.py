"""python -m lcx.evaluate --workdir RUN [--lengths 256,512] [--split test] [--config.a.b=v ...]

Loads the latest checkpoint of RUN with its saved config plus overrides (for example
--config.model.rope.scaling=yarn --config.model.rope.factor=4, zero-shot) and writes
RUN/eval/<name>.json with PNG plots beside it.
"""
import json
import pathlib
import sys

from absl import flags

from lcx import cli
from lcx.data import retrieval
from lcx.config import ConfigError
from lcx.evaluate.plots import depth_mean
from lcx.evaluate.records import DISTANCE_BUCKETS, pool_distances
from lcx.evaluate.runner import EvalOptions, evaluate_run

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to evaluate.")
_LENGTHS = flags.DEFINE_list("lengths", [], "Evaluation lengths; default 1x-16x the training length.")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test", "train"],
                           "Split to score (train: for an imported model, which never saw lcx's "
                           "splits, when the held-out ones lack documents long enough).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 16384, "Target tokens scored per length; 0 skips "
                                   "perplexity (retrieval only).")
_STRIDE = flags.DEFINE_integer("stride", 0, "Sliding-window stride; 0: the pretraining length; "
                               "-1: no sliding window.")
_TASKS = flags.DEFINE_list("tasks", list(retrieval.TASKS), "Retrieval tasks: RULER's (the "
                           "default) and bAbI's, BABILong-style: " + ", ".join(retrieval.ALL_TASKS))
_STYLES = flags.DEFINE_list("styles", list(retrieval.STYLES), "Retrieval styles.")
_DEPTHS = flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"],
                            "Needle depths: fractions of the text before the needle.")
_TRIALS = flags.DEFINE_integer("trials", 5, "Retrieval trials per (task, style, length, depth) "
                               "cell; 0 skips retrieval.")
_DISTANCE_UNIT = flags.DEFINE_integer(
    "distance_unit", 0, "Report retrieval by the needle's distance in segments of this many "
    "tokens; 0: the model's segment_len (none for a plain model).")
_NAME = flags.DEFINE_string("name", "", "Output name; default from the overrides ('base' if none).")
_OVERRIDES_FROM = flags.DEFINE_string(
    "overrides_from", "", "A JSON file whose \"overrides\" list (a.b=value) is applied before "
    "the command line's: what python -m lcx.longrope search and lcx.drope fit write.")


def main(argv, overrides):
  cli.quiet_library_logs()
  if len(argv) > 1:
    sys.exit(f"lcx.evaluate: unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    sys.exit("lcx.evaluate: --workdir RUN is required")
  try:
    overrides = [*overrides_from(_OVERRIDES_FROM.value), *overrides]
    options = EvalOptions(
        lengths=_numbers("lengths", _LENGTHS.value, int), split=_SPLIT.value,
        max_tokens=_MAX_TOKENS.value, stride=_STRIDE.value, tasks=tuple(_TASKS.value),
        styles=tuple(_STYLES.value), depths=_numbers("depths", _DEPTHS.value, float),
        trials=_TRIALS.value, name=_NAME.value, distance_unit=_DISTANCE_UNIT.value)
    results, paths = evaluate_run(_WORKDIR.value, overrides, options)
  except (ConfigError, ValueError) as e:
    sys.exit(f"lcx.evaluate: {e}")
  except OSError as e:  # RUN/eval not writable, a full disk
    sys.exit(f"lcx.evaluate: {cli.os_error(e)}")
  print(format_table(results))
  print("\noutputs:\n" + "\n".join(f"  {key:20s} {path}" for key, path in paths.items()))


def overrides_from(path: str) -> list[str]:
  """The "overrides" of a JSON file (RUN/drope.json, RUN/longrope/s4.json); [] without one."""
  if not path:
    return []
  try:
    overrides = json.loads(pathlib.Path(path).expanduser().read_text()).get("overrides")
  except FileNotFoundError:
    raise ValueError(f"--overrides_from={path}: no such file (the fit or search that writes it "
                     "has not run?)") from None
  except (OSError, ValueError, AttributeError) as e:
    raise ValueError(f"--overrides_from={path}: not a JSON object ({e})") from None
  if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o
                                                for o in overrides):
    raise ValueError(f"--overrides_from={path}: its \"overrides\" must be a list of "
                     "\"a.b=value\" strings")
  return overrides


def _numbers(flag: str, values: list[str], kind) -> tuple:
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: expected comma-separated "
                     f"{'integers' if kind is int else 'numbers'}") from None


def format_table(results: dict) -> str:
  """Markdown tables: perplexity (non-overlapping and sliding) per length, then retrieval."""
  sliding = {r["length"]: r for r in results["sliding"]}
  lines = [f"{results['scheme']} {results['name']} (step {results['checkpoint_step']}, trained at "
           f"{results['train_length']})", "",
           "| length | x train | loss | ppl | bits/byte | sliding ppl | tokens |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for row in results["perplexity"]:
    slide = sliding.get(row["length"], {})
    if "loss" not in row:
      lines.append(f"| {row['length']} | {row['multiple']:g} | n/a | n/a | n/a | n/a | 0 |")
      continue
    lines.append(f"| {row['length']} | {row['multiple']:g} | {row['loss']:.4f} | "
                 f"{row['perplexity']:.3f} | {row['bits_per_byte']:.4f} | "
                 f"{slide.get('perplexity', float('nan')):.3f} | {row['tokens']} |")
  if results["retrieval"]:
    lines += ["", retrieval_table(results)]
  return "\n".join(lines)


def retrieval_table(results: dict) -> str:
  """Per task and style: exact / ranked accuracy at each length (mean over depths)."""
  grids = results["retrieval"]
  lengths = next(iter(grids.values()))["lengths"]
  lines = ["| retrieval | " + " | ".join(str(n) for n in lengths) + " | longest at >= 90% |",
           "| --- |" + " ---: |" * (len(lengths) + 1)]
  for key, grid in grids.items():
    cells = [("n/a" if e is None else f"{e:.0%} / {r:.0%}")
             for e, r in zip(depth_mean(grid["exact"]), depth_mean(grid["ranked"]))]
    lines.append(f"| {key} | " + " | ".join(cells) + f" | {grid['longest_at_90'] or 'none'} |")
  lines.append(f"\nCells: exact match of greedy decoding / true answer ranked first among "
               f"{round(1 / next(iter(grids.values()))['chance'])} (chance "
               f"{next(iter(grids.values()))['chance']:.0%}), mean over depths.")
  by_distance = {key: grid["by_distance"] for key, grid in grids.items() if "by_distance" in grid}
  if by_distance:
    unit = next(iter(by_distance.values()))["unit"]
    lines += ["", f"| by needle distance ({unit}-token segments back) | "
              + " | ".join(DISTANCE_BUCKETS) + " |", "| --- |" + " ---: |" * len(DISTANCE_BUCKETS)]
    for key, record in by_distance.items():
      exact, ranked = (pool_distances([record], kind) for kind in ("exact", "ranked"))
      cells = [f"{exact[b][0]:.0%} / {ranked[b][0]:.0%} ({exact[b][1]})" if b in exact else "-"
               for b in DISTANCE_BUCKETS]
      lines.append(f"| {key} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(main)
