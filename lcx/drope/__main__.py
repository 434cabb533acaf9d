"""python -m lcx.drope fit --workdir RUN [--multiple 2 --grid 0,0.05,...,1 --tokens 16384
  --split validation]

Fits DroPE's test-time temperature 1 + c ln(L / L_train) for RUN (lcx.drope), writes
RUN/drope.json and prints the --config.model.temperature.* overrides that apply it.
"""
import sys

from absl import flags

from lcx import cli
from lcx.config import ConfigError
from lcx.drope import DEFAULT_GRID, FitOptions, fit

_WORKDIR = flags.DEFINE_string("workdir", None, "The run trained without position encoding.")
_MULTIPLE = flags.DEFINE_float("multiple", 2.0, "Fit at this multiple of the training length.")
_GRID = flags.DEFINE_list("grid", [str(c) for c in DEFAULT_GRID], "Values of c to try.")
_TOKENS = flags.DEFINE_integer("tokens", 16384, "Target tokens scored per value.")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test", "train"],
                           "The split whose windows are scored.")


def main(argv, overrides):
  cli.quiet_library_logs()
  if len(argv) != 2 or argv[1] != "fit" or overrides:
    sys.exit("lcx.drope: usage: python -m lcx.drope fit --workdir RUN [--multiple 2]")
  if not _WORKDIR.value:
    sys.exit("lcx.drope: --workdir RUN is required")
  try:
    grid = tuple(float(c) for c in _GRID.value)
  except ValueError:
    sys.exit(f"lcx.drope: --grid={','.join(_GRID.value)}: values of c must be numbers")
  try:
    result, path = fit(_WORKDIR.value, FitOptions(multiple=_MULTIPLE.value, grid=grid,
                                                  tokens=_TOKENS.value, split=_SPLIT.value))
  except (ConfigError, ValueError) as e:
    sys.exit(f"lcx.drope: {e}")
  except OSError as e:
    sys.exit(f"lcx.drope: {cli.os_error(e)}")
  print(f"\nc = {result['c']:g}: perplexity {result['perplexity']:.4f} at {result['length']} "
        f"tokens (c = 0: {result['perplexity_by_c'].get('0.0', float('nan')):.4f})\n"
        f"written: {path}\nuse it with:\n  "
        + " ".join(f"--config.{o}" for o in result["overrides"]))


if __name__ == "__main__":
  cli.run(main)
