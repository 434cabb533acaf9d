"""python -m lcx.sweep experiments/<study>.py:ARG --out DIR [--launcher L] [--dry_run] [--only NAME]
    [--config.a.b=value ...]   (added to every training stage's overrides)"""
import sys

from absl import flags

from lcx import cli
from lcx.sweep import Interrupted, launchers, run_sweep

_OUT = flags.DEFINE_string("out", None, "Directory of the study's runs.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each stage's command (as the launcher would "
                             "run or submit it) and run nothing.")
_ONLY = flags.DEFINE_string("only", "", "Run only the run of this name.")
_LAUNCHER = flags.DEFINE_string(
    "launcher", "local", "How each stage runs: local (a child process here), multiprocess:N "
    "(training through launch/multiprocess.sh N), slurm (submitted with sbatch "
    "launch/slurm.sbatch, chained by dependencies), tpu_pod:TPU_NAME:ZONE (launch/tpu_pod.sh).")
_LAUNCHER_ARGS = flags.DEFINE_string(
    "launcher_args", "", "Options for the launcher's tool, e.g. '--partition=gpu --nodes=4' for "
    "sbatch.")


def main(argv, overrides):
  if len(argv) != 2 or not _OUT.value and not _DRY_RUN.value:
    sys.exit("usage: python -m lcx.sweep experiments/<study>.py:ARG --out DIR [--launcher L] "
             "[--dry_run] [--only NAME] [--config.a.b=value ...]")
  try:
    launcher = launchers.parse(_LAUNCHER.value, _LAUNCHER_ARGS.value)
    states = run_sweep(argv[1], _OUT.value or "runs/sweep", dry_run=_DRY_RUN.value,
                       only=_ONLY.value, launcher=launcher, overrides=tuple(overrides))
  except Interrupted as e:
    print(f"lcx.sweep: {e}", file=sys.stderr)
    sys.exit(cli.INTERRUPTED_EXIT_CODE)
  except KeyboardInterrupt:  # between stages, or while loading the study
    print("lcx.sweep: interrupted; finished stages are kept, and the same command goes on "
          "from where it stopped", file=sys.stderr)
    sys.exit(cli.INTERRUPTED_EXIT_CODE)
  except (ValueError, RuntimeError) as e:
    sys.exit(f"lcx.sweep: {e}")
  except OSError as e:  # --out not a directory, not writable
    sys.exit(f"lcx.sweep: {cli.os_error(e)}")
  if any(s == "failed" for r in states.values() for s in r.values()):
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
