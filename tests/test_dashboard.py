"""The study dashboard: the workspace it would save, and the clear skip when offline."""
import subprocess
import sys

from lcx.dashboard import COST_METRICS, build_workspace
from tests.conftest import ROOT


def test_workspace_filters_the_study_and_groups_by_scheme():
  workspace = build_workspace("extrapolation-cpu", "team", "lcx")
  assert [s.name for s in workspace.sections] == ["Training by scheme", "Extrapolation",
                                                  "Retrieval", "Cost"]
  assert "Metric(\"Group\") == 'extrapolation-cpu'" in str(workspace.runset_settings.filters)
  assert workspace.runset_settings.groupby[0].name == "model.position"
  cost = workspace.sections[3]
  assert [p.title for p in cost.panels] == list(COST_METRICS)
  titles = [p.title for p in workspace.sections[2].panels]
  assert "niah_multikey by length and depth" in titles and "exact match at 1x" in titles
  probe = workspace.sections[2].panels[0]  # the probe's learning curve, as the trainer logs it
  assert "eval/retrieval/passkey/python/exact" in probe.y


def test_offline_dashboard_is_skipped_with_a_message(tmp_path):
  env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled"}
  result = subprocess.run([sys.executable, "-m", "lcx.dashboard", "experiments/extrapolation.py:cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "skipped the W&B workspace for extrapolation-cpu: no W&B API key" in result.stdout
