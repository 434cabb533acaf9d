"""Studies as code, run stage by stage.

  python -m lcx.sweep experiments/extrapolation.py:cpu --out DIR [--launcher L] [--dry_run]

A study file defines `get_sweep(arg) -> list[Run]`; a Run is a name and ordered Stages (pretrain,
evaluate, fine-tune, evaluate, ...). Each stage is one command (`python -m lcx.train` or
`python -m lcx.evaluate`), which a launcher (launchers.py) runs here, across processes, on a TPU
pod, or submits to SLURM. The runner is idempotent: a finished stage (see `finished`) is skipped,
and an interrupted training stage resumes from its own checkpoint when run again.
DIR/status.json records each stage's state.

The package: study.py (Run, Stage, product, zip_, loading and checking a study), runner.py
(run_sweep and the stages' state), launchers.py, __main__.py (the command).
"""
from lcx.sweep import launchers
from lcx.sweep.runner import Interrupted, finished, run_sweep, stage_command
from lcx.sweep.study import (KINDS, Run, Stage, check_runs, check_train_configs, load_sweep,
                             product, with_overrides, zip_)

__all__ = ["Interrupted", "KINDS", "Run", "Stage", "check_runs", "check_train_configs",
           "finished", "launchers", "load_sweep", "product", "run_sweep", "stage_command",
           "with_overrides", "zip_"]
