"""python -m lcx.sweep experiments/<study>.py:ARG --out DIR [--dry_run] [--only NAME]"""
import sys

from absl import app, flags

from lcx.sweep import run_sweep

_OUT = flags.DEFINE_string("out", None, "Directory of the study's runs.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each stage's command and run nothing.")
_ONLY = flags.DEFINE_string("only", "", "Run only the run of this name.")


def main(argv):
  if len(argv) != 2 or not _OUT.value and not _DRY_RUN.value:
    sys.exit("usage: python -m lcx.sweep experiments/<study>.py:ARG --out DIR [--dry_run] "
             "[--only NAME]")
  try:
    states = run_sweep(argv[1], _OUT.value or "runs/sweep", dry_run=_DRY_RUN.value,
                       only=_ONLY.value)
  except ValueError as e:
    sys.exit(f"lcx.sweep: {e}")
  if any(s == "failed" for r in states.values() for s in r.values()):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
