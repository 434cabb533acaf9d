"""The launch scripts: well-formed, documented, and local.sh dispatching runs and studies."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPTS = ["local.sh", "multiprocess.sh", "slurm.sbatch", "tpu_pod.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_and_documents_its_arguments(script):
  path = ROOT / "launch" / script
  subprocess.run(["bash", "-n", str(path)], check=True)
  header = path.read_text().splitlines()[1:6]
  assert all(line.startswith("#") for line in header) and os.access(path, os.X_OK)


def test_local_sh_runs_a_study_through_the_sweep(tmp_path):
  result = subprocess.run([str(ROOT / "launch/local.sh"), "experiments/extrapolation.py:cpu",
                           "--dry_run", f"--out={tmp_path}"], env=dict(os.environ, PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=120, check=True)
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 18 and sum(" -m lcx.train " in line for line in lines) == 7


def test_usage_errors_print_the_header():
  result = subprocess.run([str(ROOT / "launch/tpu_pod.sh"), "only-a-name"], capture_output=True,
                          text=True, timeout=30)
  assert result.returncode == 2 and "TPU_NAME, ZONE" in result.stderr
