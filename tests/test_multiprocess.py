"""Multi-host training for real: several JAX processes on 127.0.0.1 (launch/multiprocess.sh)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from lcx.data.sources import Documents
from lcx.cli import PREEMPTED_EXIT_CODE
from lcx.metrics import read_jsonl
from lcx.train import train_and_evaluate
from lcx.runs import layout
from tests.conftest import ROOT


def _flags(c) -> list[str]:
  """The tiny test config as command-line overrides."""
  return [f"--config.data.data_dir={c.data.data_dir}", "--config.data.seq_len=32",
          "--config.data.batch_size=8", "--config.model.d_model=32", "--config.model.mlp_dim=64",
          f"--config.train.steps={c.train.steps}", "--config.train.log_every=1",
          "--config.train.warmup_steps=2", "--config.train.peak_flops=1e12",
          "--config.checkpoint.every_steps=3", "--config.wandb.mode=disabled"]


def _launch(processes: int, workdir, flags, timeout=240):
  env = dict(os.environ, LCX_CPU_DEVICES="8", PYTHON=sys.executable)
  return subprocess.run([str(ROOT / "launch/multiprocess.sh"), str(processes), "--config",
                         "configs/pretrain.py:tiny", f"--workdir={workdir}", *flags],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_match_one_and_checkpoints_cross_over(tiny_config, tmp_path):
  Documents("pystdlib", "train", data_dir=tiny_config.data.data_dir)  # build once, up front
  two, one = tmp_path / "two", tmp_path / "one"
  result = _launch(2, two, _flags(tiny_config))
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  train_and_evaluate(tiny_config, one)  # one process, the same 8 devices
  losses = lambda d: [r["loss"] for r in read_jsonl(d / layout.METRICS)]
  assert len(losses(two)) == 6
  np.testing.assert_allclose(losses(two), losses(one), rtol=2e-5)

  # The checkpoint two processes wrote continues in one process, as one process's own does.
  for d in (two, one):
    shutil.copytree(d, tmp_path / f"{d.name}-continued")
  tiny_config.train.steps = 8
  for d in (two, one):
    train_and_evaluate(tiny_config, tmp_path / f"{d.name}-continued")
  continued = [losses(tmp_path / f"{d.name}-continued")[6:] for d in (two, one)]
  assert len(continued[0]) == 2
  np.testing.assert_allclose(continued[0], continued[1], rtol=2e-5)

  # And one process's checkpoint continues in two.
  flags = [f for f in _flags(tiny_config) if "train.steps" not in f] + ["--config.train.steps=10"]
  result = _launch(2, tmp_path / "one-continued", flags)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert [r["step"] for r in read_jsonl(tmp_path / "one-continued" / layout.METRICS)][-2:] == [9, 10]


def test_a_failing_process_stops_the_launch(tiny_config, tmp_path):
  result = _launch(2, tmp_path / "bad", ["--config.model.position=cope"], timeout=120)
  assert result.returncode != 0
  assert "config.model.position='cope' is not allowed" in result.stdout
  assert re.search(r"process [01] of 2 exited with status 1", result.stderr), result.stderr


def _start_pair(config, workdir, log_dir, extra=()):
  """Two lcx.train processes of 4 devices each on a free port, training without end."""
  Documents("pystdlib", "train", data_dir=config.data.data_dir)
  config.train.steps = 100000
  flags = [f for f in _flags(config) if "checkpoint" not in f]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); "
                         "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  logs = [open(log_dir / f"process_{i}.log", "w") for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "lcx.train", "--config", "configs/pretrain.py:tiny",
       f"--workdir={workdir}", *flags, f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", "--config.checkpoint.every_steps=100000",
       *extra], cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  metrics = workdir / layout.METRICS
  deadline = time.time() + 180
  while time.time() < deadline and not (metrics.exists() and len(read_jsonl(metrics)) >= 3):
    time.sleep(0.5)
  return procs, logs


def _stop(procs, logs):
  for p in procs:
    p.kill()
  for f in logs:
    f.close()


def test_a_dead_process_stops_its_peers_within_the_heartbeat_timeout(tiny_config, tmp_path):
  procs, logs = _start_pair(tiny_config, tmp_path / "run", tmp_path, ["--heartbeat_timeout_s=10"])
  try:
    procs[1].kill()
    killed = time.time()
    code = procs[0].wait(timeout=90)
    waited = time.time() - killed
  finally:
    _stop(procs, logs)
  assert code != 0 and waited < 60, (code, waited)
  # Usually the heartbeat notices first ("another task died"); killed mid-collective, the
  # collective's own transport (gloo) may report the lost connection first.
  log = (tmp_path / "process_0.log").read_text().lower()
  reasons = ("another task died", "closed by peer", "reset by peer", "read error", "write error",
             "socket closed", "enforce fail at")  # the last: gloo's check on a cut-off message
  assert any(reason in log for reason in reasons), log[-3000:]


def test_sigterm_on_one_host_gives_one_consistent_checkpoint(tiny_config, tmp_path):
  workdir = tmp_path / "run"
  procs, logs = _start_pair(tiny_config, workdir, tmp_path)
  try:
    procs[1].send_signal(signal.SIGTERM)  # only process 1 is preempted
    codes = [p.wait(timeout=120) for p in procs]
  finally:
    _stop(procs, logs)
  assert codes == [PREEMPTED_EXIT_CODE] * 2  # stopped, not finished: launchers resume it
  saved = [int(s) for s in os.listdir(workdir / layout.CHECKPOINTS) if s.isdigit()]
  assert len(saved) == 1
  summary = json.loads((workdir / layout.SUMMARY).read_text())
  assert summary["preempted"] and summary["step"] == saved[0]
  # It resumes, here in one process.
  tiny_config.train.steps = saved[0] + 1
  train_and_evaluate(tiny_config, workdir)
  assert read_jsonl(workdir / layout.METRICS)[-1]["step"] == saved[0] + 1
