"""The run directory's file names, and where a fine-tune's source run is now.

  workdir/
    config.json            the resolved config (replaced atomically)
    summary.json           where training ended: step, losses, costs (replaced atomically)
    metrics.jsonl          a row per logged step; metrics.superseded.jsonl: rows a resume replaced
    eval_metrics.jsonl     evaluation during training
    checkpoints/<step>/    orbax checkpoints; corrupt_checkpoints/: damaged ones set aside
    eval/<name>.json       a full evaluation (python -m lcx.evaluate), its figures beside it
    longrope/s<S>.json     LongRoPE's tables searched at S times the length (python -m lcx.longrope)
    drope.json             DroPE's fitted temperature (python -m lcx.drope)
    wandb/  wandb_run_id   the W&B run and its id (a resume continues it)
    .lcx-train.lock        held by the training process
"""
import pathlib

CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVAL_METRICS = "eval_metrics.jsonl"
CHECKPOINTS = "checkpoints"
QUARANTINE = "corrupt_checkpoints"
EVAL = "eval"
WANDB_ID = "wandb_run_id"
LOCK = ".lcx-train.lock"
# Commands that tune a trained run and write what its evaluations apply into it (above), not into
# a run of their own: a study knows them finished by the sweep's marker, which names its kind.
TUNING_KINDS = ("longrope", "drope")


def source_dir(recorded, run_dir) -> pathlib.Path:
  """The run a fine-tune started from: where it was recorded, or, for a study moved or copied
  since, the folder of that name beside the fine-tune (the sweep lays out a run's stages side by
  side)."""
  recorded = pathlib.Path(recorded)
  beside = pathlib.Path(run_dir).parent / recorded.name
  return recorded if recorded.exists() or not beside.exists() else beside
