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
from lcx.evaluate.runner import EvalOptions, evaluate_run
from lcx.evaluate.tables import format_table

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to evaluate.")
_LENGTHS = flags.DEFINE_list("lengths", [], "Evaluation lengths; default 1x-16x the training length.")
_RETRIEVAL_LENGTHS = flags.DEFINE_list("retrieval_lengths", [], "The retrieval suite's lengths; "
                                        "default --lengths.")
_RETRIEVAL_SPACE = flags.DEFINE_enum(
    "retrieval_space", "eval", ["eval", "train"], "Whose keys, values and bAbI entities the "
    "retrieval trials use: evaluation's (never in training) or the training mixture's (a skill "
    "learned on familiar words, against one that carries to new ones).")
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
_LONGPPL = flags.DEFINE_bool(
    "longppl", False, "Also LongPPL: perplexity over the key tokens, those whose loss drops by "
    "more than --longppl_drop nats with the whole window instead of the last --longppl_window "
    "tokens, and stays below --longppl_loss (Fang et al., 2025).")
_LONGPPL_WINDOW = flags.DEFINE_integer("longppl_window", 0, "LongPPL's short context in tokens; "
                                       "0: the pretraining length (the paper's 4K at 4K).")
_LONGPPL_DROP = flags.DEFINE_float("longppl_drop", 2.0, "LongPPL: the loss drop (nats) that makes "
                                   "a key token (the paper's 2).")
_LONGPPL_LOSS = flags.DEFINE_float("longppl_loss", 2.0, "LongPPL: a key token's loss with the whole "
                                   "window stays below this (nats; the paper's 2).")
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
        retrieval_lengths=_numbers("retrieval_lengths", _RETRIEVAL_LENGTHS.value, int),
        retrieval_space=_RETRIEVAL_SPACE.value,
        max_tokens=_MAX_TOKENS.value, stride=_STRIDE.value, tasks=tuple(_TASKS.value),
        styles=tuple(_STYLES.value), depths=_numbers("depths", _DEPTHS.value, float),
        trials=_TRIALS.value, name=_NAME.value, distance_unit=_DISTANCE_UNIT.value,
        longppl=_LONGPPL.value, longppl_window=_LONGPPL_WINDOW.value,
        longppl_drop=_LONGPPL_DROP.value, longppl_loss=_LONGPPL_LOSS.value)
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


if __name__ == "__main__":
  cli.run(main)
