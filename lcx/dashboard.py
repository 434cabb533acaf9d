"""python -m lcx.dashboard experiments/<study>.py:ARG [--entity E] [--project P]

Saves a W&B workspace for a study, so the dashboard is one command: training loss by scheme,
perplexity vs length, retrieval (the probe during training; heatmaps and accuracy vs length from
the evaluations), and cost (tokens, FLOPs, time, throughput, memory). Runs are filtered to the
study's group and grouped by position scheme. It needs a W&B API key; without one (offline) it
says so and saves nothing.
"""
import sys

from absl import app, flags

from lcx.metrics import has_wandb_key
from lcx.data.retrieval import STYLES, TASKS
from lcx.sweep import load_sweep

_ENTITY = flags.DEFINE_string("entity", "", "W&B entity; default: the API key's default entity.")
_PROJECT = flags.DEFINE_string("project", "lcx", "W&B project the study's runs log to.")

COST_METRICS = ("tokens_seen", "flops_seen", "train_seconds", "tokens_per_second",
                "peak_memory_bytes", "mfu", "mfu_causal")


def build_workspace(study: str, entity: str, project: str):
  """The workspace object (nothing is sent until .save())."""
  import wandb_workspaces.reports.v2 as wr
  import wandb_workspaces.workspaces as ws

  training = ws.Section(name="Training by scheme", is_open=True, panels=[
      wr.LinePlot(title="training loss", x="Step", y=["loss"], smoothing_factor=0.6),
      wr.LinePlot(title="validation perplexity at 1x / 2x / 4x during training", x="Step",
                  y=["eval/perplexity_x1", "eval/perplexity_x2", "eval/perplexity_x4"]),
      wr.LinePlot(title="learning rate", x="Step", y=["learning_rate"]),
      wr.LinePlot(title="gradient norm", x="Step", y=["grad_norm"]),
  ])
  extrapolation = ws.Section(name="Extrapolation", is_open=True, panels=[
      wr.MediaBrowser(title="perplexity vs length", media_keys=["plots/perplexity_png"]),
      wr.MediaBrowser(title="loss by position", media_keys=["plots/by_position_png"]),
  ])
  retrieval = ws.Section(name="Retrieval", is_open=True, panels=[
      wr.LinePlot(title="retrieval probe during training: exact match at 1x", x="Step", y=[
          f"eval/retrieval/{task}/{style}/exact" for task in TASKS for style in STYLES]),
      wr.MediaBrowser(title="retrieval vs length", media_keys=["plots/retrieval_png"]),
      *[wr.MediaBrowser(title=f"{task} by length and depth", media_keys=[f"plots/{task}_png"])
        for task in TASKS],
      wr.BarPlot(title="exact match at 1x", metrics=[
          f"retrieval/{task}/{style}/exact_1x" for task in TASKS for style in STYLES]),
      wr.BarPlot(title="longest length at >= 90% exact match", metrics=[
          f"retrieval/{task}/{style}/longest_at_90" for task in TASKS for style in STYLES]),
  ])
  cost = ws.Section(name="Cost", is_open=True, panels=[
      wr.BarPlot(title=name, metrics=[name]) for name in COST_METRICS])
  return ws.Workspace(
      entity=entity, project=project, name=f"lcx study: {study}",
      sections=[training, extrapolation, retrieval, cost],
      runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == study],
                                        groupby=[ws.Config("model.position")]))


def main(argv):
  if len(argv) != 2:
    sys.exit("usage: python -m lcx.dashboard experiments/<study>.py:ARG [--entity E] [--project P]")
  try:
    study, _ = load_sweep(argv[1])
  except ValueError as e:
    sys.exit(f"lcx.dashboard: {e}")
  if not has_wandb_key():
    print(f"lcx.dashboard: skipped the W&B workspace for {study}: no W&B API key (offline). "
          "Run `wandb login` (or set WANDB_API_KEY), `wandb sync` the offline runs, then rerun.")
    return
  import wandb
  entity = _ENTITY.value or wandb.Api().default_entity
  workspace = build_workspace(study, entity, _PROJECT.value)
  workspace.save()
  print(f"lcx.dashboard: saved {workspace.name!r}: {workspace.url}")


if __name__ == "__main__":
  app.run(main)
