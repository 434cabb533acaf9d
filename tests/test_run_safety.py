"""Nothing a researcher does loses a run: mistakes, crashes and concurrent use (issue 15's cases)."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lcx.runs.checkpoint import CheckpointMismatch
from lcx.evaluate.runner import EvalOptions, evaluate_run
from lcx.metrics import JsonlWriter, read_jsonl
from lcx.overrides import load_config
from lcx.train import TrainingDiverged, train_and_evaluate
from lcx.runs.workdir import WorkdirError
from lcx.runs import layout
from tests.conftest import ROOT

FAST_EVAL = EvalOptions(lengths=(32,), max_tokens=256, trials=0, stride=-1)


def _copy(run: pathlib.Path, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(run, tmp_path / "run"))


def _listing(workdir: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")
                if "checkpoint" in str(p.relative_to(workdir)))


def _steps(workdir) -> list[int]:
  return [r["step"] for r in read_jsonl(pathlib.Path(workdir) / layout.METRICS)]


def test_evaluating_with_a_typo_is_one_error_and_moves_nothing(trained_run, tiny_config, tmp_path):
  run = _copy(trained_run, tmp_path)
  before = _listing(run)
  with pytest.raises(CheckpointMismatch, match=r"model.n_layers: 2 -> 3.*blocks/2/attn/wk is not "
                     r"in the checkpoint"):
    evaluate_run(run, ["model.n_layers=3"], FAST_EVAL, progress=False)
  assert _listing(run) == before and not (run / layout.QUARANTINE).exists()
  # The run resumes where it was, its metrics intact.
  tiny_config.train.steps = 7
  train_and_evaluate(tiny_config, run)
  assert _steps(run) == list(range(1, 8))


def test_resume_refuses_architecture_and_data_changes_and_allows_them_on_request(
    trained_run, tiny_config, tmp_path):
  run = _copy(trained_run, tmp_path)
  saved = (run / layout.CONFIG).read_text()
  for field, value in (("model", dict(d_model=64)), ("model", dict(position="alibi")),
                       ("data", dict(seq_len=64))):
    config = tiny_config.copy_and_resolve_references()
    config[field].update(value)
    name, new = next(iter(value.items()))
    with pytest.raises(WorkdirError, match=rf"{field}.{name}: .* -> {new!r}.*resume_changes=allow"):
      train_and_evaluate(config, run)
    assert (run / layout.CONFIG).read_text() == saved and _steps(run) == list(range(1, 7))
  # Schedule fields may change: the run goes on to step 8 with a new rate.
  tiny_config.train.update(steps=8, learning_rate=1e-3)
  tiny_config.model.position = "alibi"
  tiny_config.resume_changes = "allow"
  train_and_evaluate(tiny_config, run)
  assert _steps(run) == list(range(1, 9))
  assert json.loads((run / layout.CONFIG).read_text())["model"]["position"] == "alibi"
  kept = list(run.glob("config.before-*.json"))
  assert len(kept) == 1 and kept[0].read_text() == saved


def _damage(checkpoint: pathlib.Path) -> None:
  """Overwrites 200 bytes in the middle of every data file of the checkpoint's parameters."""
  for path in (checkpoint / "params").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      data = bytearray(path.read_bytes())
      middle = len(data) // 2
      data[middle:middle + 200] = bytes(range(200))[:len(data[middle:middle + 200])]
      path.write_bytes(bytes(data))


def test_a_run_whose_checkpoints_were_all_set_aside_is_not_restarted(trained_run, tiny_config,
                                                                      tmp_path):
  run = _copy(trained_run, tmp_path)
  for step in (3, 6):
    _damage(run / layout.CHECKPOINTS / str(step))
  metrics = (run / layout.METRICS).read_text()
  with pytest.raises(WorkdirError, match="set aside as damaged.*corrupt_checkpoints: 3, 6"):
    train_and_evaluate(tiny_config, run)
  assert sorted(os.listdir(run / layout.QUARANTINE)) == ["3", "6"]
  assert (run / layout.METRICS).read_text() == metrics
  with pytest.raises(WorkdirError, match="set aside"):  # and not on the next try either
    train_and_evaluate(tiny_config, run)


def test_every_checkpoint_damaged_is_one_line_without_orbax_noise(trained_run, data_dir, tmp_path):
  """Array data damaged in every checkpoint: orbax abandons its other reads of each, and Python
  used to print each abandoned read's error (~60 lines of TensorStore spec apiece) after lcx's
  refusal."""
  def damage(checkpoint, start: float) -> None:
    """Random bytes from `start` (a fraction) on in the files that hold its arrays: each
    process's database when orbax keeps them apart, else the root's."""
    for item in ("params", "optimizer"):
      chunks = (list((checkpoint / item).glob("ocdbt.process_*/d/*"))
                or list((checkpoint / item).glob("d/*")))
      assert chunks, checkpoint / item
      for chunk in chunks:
        data = bytearray(chunk.read_bytes())
        first = int(len(data) * start)
        data[first:] = np.random.default_rng(0).bytes(len(data) - first)
        chunk.write_bytes(bytes(data))

  # An OCDBT file is appended to, so damage to its second half may miss all that a restore reads
  # (then the run resumes): the files are damaged whole on a fresh copy (the arrays' metadata with
  # them; what matters is the refusal's output).
  for start in (0.5, 0.0):
    run = pathlib.Path(shutil.copytree(trained_run, tmp_path / f"run-{start}"))
    for checkpoint in run.glob(f"{layout.CHECKPOINTS}/*"):
      damage(checkpoint, start)
    result = _cli("lcx.train", f"--workdir={run}", *_tiny_flags(data_dir),
                  "--config.model.n_heads=4", "--config.train.warmup_steps=2",
                  "--config.checkpoint.every_steps=3", "--config.train.steps=8")
    if "resumed from" not in result.stderr:
      break
  line = _one_line_error(result, "lcx.train: every checkpoint of this run was set aside")
  assert "corrupt_checkpoints: 3, 6" in line
  assert "Exception ignored" not in result.stderr and len(result.stderr.splitlines()) < 200, (
      result.stderr[-3000:])


def test_checkpoint_values_are_checked_against_their_checksums(trained_run, tiny_config, tmp_path,
                                                               caplog):
  run = _copy(trained_run, tmp_path)
  # Checkpoint 6's parameter files replaced by step 3's: every file reads back without an error.
  shutil.rmtree(run / layout.CHECKPOINTS / "6" / "params")
  shutil.copytree(run / layout.CHECKPOINTS / "3" / "params", run / layout.CHECKPOINTS / "6" / "params")
  with caplog.at_level("ERROR"):
    results, _ = evaluate_run(run, [], FAST_EVAL, progress=False)
  assert results["checkpoint_step"] == 3  # evaluation skips it and moves nothing
  assert "differ from the checksums" in caplog.text and (run / layout.CHECKPOINTS / "6").is_dir()
  tiny_config.train.steps = 7
  train_and_evaluate(tiny_config, run)  # training sets it aside and resumes from step 3
  assert (run / layout.QUARANTINE / "6").is_dir()
  assert _steps(run) == list(range(1, 8))
  assert [r["step"] for r in read_jsonl(run / "metrics.superseded.jsonl")] == [4, 5, 6]


def test_a_run_on_a_damaged_token_cache_trains_on_the_rebuilt_one(trained_run, tiny_config,
                                                                  data_dir, tmp_path, caplog):
  """4 MiB of random bytes in the middle of the training split's token cache: the run rebuilds
  it and trains exactly as the run on the intact cache did (it used to train on the garbage)."""
  from lcx.data import token_cache
  from lcx.data.sources import Documents
  from lcx.data.tokenizers import ByteTokenizer
  data = tmp_path / "data"
  shutil.copytree(pathlib.Path(data_dir) / "pystdlib", data / "pystdlib")
  cache = token_cache.prepare(Documents("pystdlib", "train", data_dir=str(data)), ByteTokenizer(),
                              data / "lcx_cache", progress=False)
  tokens = cache.folder / "tokens.bin"
  assert tokens.stat().st_size > 8 << 20
  with open(tokens, "r+b") as f:
    f.seek(tokens.stat().st_size // 2 - (2 << 20))
    f.write(np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes())
  tiny_config.data.data_dir = str(data)
  with caplog.at_level("WARNING"):
    train_and_evaluate(tiny_config, tmp_path / "run")
  assert "do not match their checksum" in caplog.text
  losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / layout.METRICS)]
  np.testing.assert_allclose(losses, [r["loss"] for r in read_jsonl(trained_run / layout.METRICS)],
                             rtol=1e-6)


def test_a_diverging_run_checkpoints_nothing_and_a_saner_rerun_trains(tiny_config, tmp_path):
  tiny_config.train.update(learning_rate=1e30, warmup_steps=0, grad_clip=0.0, steps=20)
  tiny_config.checkpoint.every_steps = 1
  with pytest.raises(TrainingDiverged, match="cannot train on|not finite"):
    train_and_evaluate(tiny_config, tmp_path / "run")
  # Step 1's parameters give a finite loss but gradients that are not: no checkpoint holds them.
  assert not [s for s in os.listdir(tmp_path / "run" / layout.CHECKPOINTS) if s.isdigit()]
  tiny_config.train.update(learning_rate=1e-3, steps=3)
  train_and_evaluate(tiny_config, tmp_path / "run")
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0
             for r in read_jsonl(tmp_path / "run" / layout.METRICS))


def test_a_second_training_on_a_workdir_is_refused_until_the_first_is_gone(tiny_config, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from lcx.runs.workdir import TrainingLock\n"
       f"with TrainingLock(__import__('pathlib').Path({str(workdir)!r})):\n"
       "  print('held', flush=True); time.sleep(120)"],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirError, match=rf"in use by another training \(pid {holder.pid} "):
      train_and_evaluate(tiny_config, workdir)
    assert not (workdir / layout.CONFIG).exists()
  finally:
    holder.kill()  # dies without releasing anything: its lock is stale
    holder.wait()
  tiny_config.train.steps = 1
  train_and_evaluate(tiny_config, workdir)
  assert _steps(workdir) == [1]


def test_metrics_survive_a_cut_off_line_and_a_deleted_file(trained_run, tiny_config, tmp_path):
  run = _copy(trained_run, tmp_path)
  with open(run / layout.METRICS, "a") as f:
    f.write('{"step": 7, "loss": 2.')  # a crash in the middle of a write
  assert _steps(run) == list(range(1, 7))  # readers skip it
  tiny_config.train.steps = 8
  train_and_evaluate(tiny_config, run)
  assert _steps(run) == list(range(1, 9))

  writer = JsonlWriter(tmp_path / "m.jsonl", resume_step=0)
  writer.write({"step": 1})
  (tmp_path / "m.jsonl").unlink()  # deleted while the run writes it
  writer.write({"step": 2})
  (tmp_path / "m.jsonl").write_text('{"step": 99}\n')  # replaced by another file
  writer.write({"step": 3})
  writer.close()
  assert _steps_of(tmp_path / "m.jsonl") == [1, 2, 3]


def _steps_of(path) -> list[int]:
  return [r["step"] for r in read_jsonl(path)]


@pytest.mark.parametrize("options, flag", [
    (dict(depths=(1.5, -0.5)), "--depths"), (dict(lengths=(0,)), "--lengths"),
    (dict(lengths=(-5,)), "--lengths"), (dict(trials=-1), "--trials"),
    (dict(tasks=("needle",)), "--tasks"), (dict(styles=("java",)), "--styles"),
    (dict(stride=-5), "--stride"), (dict(max_tokens=-1), "--max_tokens"),
    (dict(name="../x"), "--name"), (dict(retrieval_lengths=(0,)), "--retrieval_lengths"),
    (dict(tasks=("passkey", "babi_qa3"), styles=("python",)), "--tasks"),
    (dict(retrieval_space="test"), "--retrieval_space"),
    (dict(longppl_window=-1), "--longppl_window"), (dict(longppl_drop=0.0), "--longppl_drop")])
def test_evaluation_arguments_are_checked(options, flag):
  with pytest.raises(ValueError, match=f"^{flag}"):
    EvalOptions(**options)


def test_an_unwritable_workdir_is_refused_before_anything_is_built(tiny_config, tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(WorkdirError, match="is a file, not a directory"):
    train_and_evaluate(tiny_config, tmp_path / "file")
  tiny_config.seed = -1
  with pytest.raises(Exception, match=r"config.seed=-1 must be an integer in \[0, 2\^32\)"):
    train_and_evaluate(tiny_config, tmp_path / "run")


def _cli(*args, timeout=120, env=None):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", **(env or {}))
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _one_line_error(result, prefix: str) -> str:
  """The error line of a command that failed the way a user mistake should: exit status 1, no
  traceback, one line that starts with the command's name."""
  output = result.stdout + result.stderr
  assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(prefix), output[-3000:]
  return last


@pytest.mark.parametrize("spec, overrides, expected", [
    ("configs/pretrain.py:tiny", ["model.wibble=3"],
     "config.model.wibble does not exist; allowed fields there: "),
    ("configs/pretrain.py:tiny", ["train=3"], "config.train is a section, not a field"),
    ("configs/pretrain.py:tiny", ["train.steps=many"], "config.train.steps='many'"),
    ("configs/nope.py:tiny", [], "config file 'configs/nope.py' does not exist"),
    ("configs/pretrain.py:huge", [], "unknown preset 'huge'; allowed: tiny")])
def test_config_mistakes_are_one_line(spec, overrides, expected, monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(ValueError, match=re.escape(expected)) as error:
    load_config(spec, overrides)
  assert "\n" not in str(error.value)


def test_train_command_line_mistakes_are_one_line(tmp_path, data_dir):
  result = _cli("lcx.train", "--config=configs/pretrain.py:huge", f"--workdir={tmp_path / 'run'}",
                "--config.model.wibble=3", timeout=60)
  assert "unknown preset 'huge'" in _one_line_error(result, "lcx.train: ")
  result = _cli("lcx.train", "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path / 'run'}",
                f"--config.data.data_dir={data_dir}", "--config.model.wibble=3", timeout=60)
  assert "config.model.wibble does not exist" in _one_line_error(result, "lcx.train: ")
  assert not (tmp_path / "run").exists()


@pytest.mark.skipif(pathlib.Path("/proc/sys/vm/overcommit_memory").exists() and pathlib.Path(
    "/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
    reason="this kernel grants any allocation and kills the process when it is touched")
def test_a_model_too_big_for_memory_is_one_line(tmp_path, data_dir):
  """A billion-token vocabulary: terabytes of logits, which XLA fails to allocate at once."""
  result = _cli("lcx.train", "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path / 'run'}",
                f"--config.data.data_dir={data_dir}", f"--config.model.vocab_size={2 ** 30}",
                "--config.wandb.mode=disabled", timeout=120)
  error = _one_line_error(result, "lcx.train: ")
  assert "out of device memory (" in error and "Out of memory allocating" in error
  assert "train.grad_accum_steps" in error


def test_data_mistakes_are_one_line(tmp_path, data_dir):
  binary = tmp_path / "binary"
  binary.mkdir()
  (binary / "a.bin").write_bytes(bytes(range(256)) * 4)
  one_file = tmp_path / "one_file"
  one_file.mkdir()
  (one_file / "notes.txt").write_text("x = 1\n" * 2000)  # lands in the train split
  common = ["lcx.train", "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={data_dir}", "--config.data.name=text_dir"]
  result = _cli(*common, f"--config.data.text_dir={binary}")
  assert "files found are all binary" in _one_line_error(result, "lcx.train: ")
  assert not (tmp_path / "run").exists()  # a refused start leaves no workdir behind
  result = _cli(*common, f"--config.data.text_dir={one_file}", "--config.eval.every_steps=5",
                "--config.train.steps=1", "--config.data.seq_len=32")
  assert "eval.every_steps=5 needs a validation split" in _one_line_error(result, "lcx.train: ")


def _namespace_mounts_work() -> bool:
  """Whether this machine lets a test mount a small file system of its own (root, unshare)."""
  probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                         capture_output=True)
  return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not (shutil.which("unshare") and _namespace_mounts_work()),
                                  reason="needs unshare and mount (root) for a small file system")


def _tiny_flags(data_dir) -> list[str]:
  return ["--config=configs/pretrain.py:tiny", f"--config.data.data_dir={data_dir}",
          "--config.data.seq_len=32", "--config.data.batch_size=8", "--config.model.d_model=32",
          "--config.model.mlp_dim=64", "--config.train.log_every=1",
          "--config.train.peak_flops=1e12", "--config.wandb.mode=disabled",
          "--config.mesh.data=1"]


@needs_mounts
def test_a_full_disk_stops_the_run_at_once_in_one_line_keeping_its_checkpoints(tmp_path, data_dir):
  disk = tmp_path / "disk"
  disk.mkdir()
  run = disk / "run"
  command = " ".join([sys.executable, "-m", "lcx.train", f"--workdir={run}",
                      *_tiny_flags(data_dir), "--config.train.steps=100000",
                      "--config.checkpoint.every_steps=4"])
  # 1.5 MiB free: room for a checkpoint or two of this model, and then the disk is full.
  script = f"""
    mount -t tmpfs -o size=8m tmpfs {disk}
    dd if=/dev/zero of={disk}/filler bs=64k count=104 2>/dev/null
    {command} > {tmp_path}/out.log 2> {tmp_path}/err.log
    echo $? > {tmp_path}/code
    ls {run}/checkpoints > {tmp_path}/checkpoints
    cp {run}/metrics.jsonl {tmp_path}/metrics.jsonl
  """
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env, timeout=240)
  result = subprocess.CompletedProcess([], int((tmp_path / "code").read_text()),
                                       (tmp_path / "out.log").read_text(),
                                       (tmp_path / "err.log").read_text())
  line = _one_line_error(result, "lcx.train: ")
  # ls lists 12 before 4: sort as numbers
  kept = sorted(int(s) for s in (tmp_path / layout.CHECKPOINTS).read_text().split() if s.isdigit())
  assert kept == list(range(4, 4 * len(kept) + 1, 4))  # every checkpoint written is kept
  rows = read_jsonl(tmp_path / layout.METRICS)  # whole rows, one a step from the first
  assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
  # Whichever write meets the full disk first says so, naming what it wrote: a checkpoint, or a
  # file of the run (metrics, a status or summary file, ...); which one depends on timing.
  match = re.match(r"lcx.train: saving checkpoint (\d+) to \S+ failed \(no space left on "
                   r"device\); stopped here, earlier checkpoints kept: ([\d, ]+|none)$", line)
  if match is None:
    written = re.match(r"lcx.train: (/\S+): No space left on device; the checkpoints written so "
                       r"far are kept$", line)
    assert written and written[1].startswith(str(disk)), line
    return
  failed = int(match[1])
  assert kept == list(range(4, failed, 4))
  # Stopped as soon as the failure was known, at the latest before saving again; it used to
  # train on to the next save and fail there with tracebacks.
  assert rows[-1]["step"] <= failed + 4


@needs_mounts
def test_a_read_only_workdir_is_refused_in_one_line(tmp_path, data_dir):
  run = tmp_path / "run"
  run.mkdir()
  command = " ".join([sys.executable, "-m", "lcx.train", f"--workdir={run}",
                      *_tiny_flags(data_dir)])
  script = f"mount --bind {run} {run} && mount -o remount,ro,bind {run} && exec {command}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert "is not writable (Read-only file system)" in _one_line_error(result, "lcx.train: ")


def test_wandb_online_but_unanswered_falls_back_to_offline_within_its_timeout(tmp_path, data_dir):
  """A server that takes the connection and never answers (a network that drops packets): W&B
  would wait 90 s and more; the run waits wandb.init_timeout_s, says so in one line and logs
  offline."""
  import socket
  silent = socket.socket()
  silent.bind(("127.0.0.1", 0))
  silent.listen(16)  # the kernel completes the connections; nothing ever reads or answers
  env = dict(WANDB_API_KEY="x" * 40, WANDB_MODE="online",
             WANDB_BASE_URL=f"http://127.0.0.1:{silent.getsockname()[1]}")
  flags = [f for f in _tiny_flags(data_dir) if "wandb" not in f]
  try:
    result = _cli("lcx.train", f"--workdir={tmp_path / 'run'}", *flags,
                  "--config.wandb.mode=online", "--config.wandb.init_timeout_s=1",
                  "--config.train.steps=1", env=env)
  finally:
    silent.close()
  assert result.returncode == 0, result.stderr[-3000:]
  warning = [line for line in result.stderr.splitlines() if "W&B online logging failed" in line]
  assert len(warning) == 1 and "within wandb.init_timeout_s=1 " in warning[0], result.stderr[-3000:]
  assert "logging offline instead, upload later with `wandb sync " in warning[0]
  assert _steps(tmp_path / "run") == [1]
  assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_evaluate_command_line_mistakes_are_one_line(trained_run):
  for args, expected in (
      (["--depths=1.5,-0.5"], "--depths=1.5,-0.5: depths are fractions"),
      (["--lengths=abc"], "--lengths=abc: expected comma-separated integers"),
      (["--config.model.n_layers=3"], "the overrides change model.n_layers: 2 -> 3")):
    result = _cli("lcx.evaluate", f"--workdir={trained_run}", *args)
    assert expected in _one_line_error(result, "lcx.evaluate: ")
  assert not (trained_run / layout.QUARANTINE).exists()


@pytest.mark.parametrize("body, expected", [
    ("def get_sweep(arg)\n  return []\n", "study.py:1: "),
    ("RUNS = []\n", "defines no get_sweep(arg) function"),
    ("def get_sweep(arg):\n  pass\n", "must return a list of lcx.sweep.Run, not NoneType")])
def test_study_file_mistakes_are_one_line(body, expected, tmp_path):
  (tmp_path / "study.py").write_text(body)
  result = _cli("lcx.sweep", f"{tmp_path / 'study.py'}:x", f"--out={tmp_path / 'out'}",
                timeout=60)
  assert expected in _one_line_error(result, "lcx.sweep: ")


def test_multiprocess_launch_stops_promptly_naming_the_failed_process(tiny_config, tmp_path,
                                                                      data_dir):
  workdir = tmp_path / "run"
  env = dict(os.environ, LCX_CPU_DEVICES="2", PYTHON=sys.executable, LCX_LOG_DIR=str(tmp_path))
  launch = subprocess.Popen(
      [str(ROOT / "launch/multiprocess.sh"), "2", f"--workdir={workdir}",
       *[f for f in _tiny_flags(data_dir) if "mesh" not in f], "--config.train.steps=100000",
       "--config.checkpoint.every_steps=100000"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 180
    while time.time() < deadline and len(read_jsonl(workdir / layout.METRICS)
                                         if (workdir / layout.METRICS).exists() else []) < 2:
      time.sleep(0.3)
    peer = subprocess.run(["pgrep", "-f", f"process_id=1 .*--workdir={workdir}"],
                          capture_output=True, text=True).stdout.split()
    assert len(peer) == 1, peer
    os.kill(int(peer[0]), signal.SIGKILL)
    killed = time.time()
    out, err = launch.communicate(timeout=60)
    waited = time.time() - killed
  finally:
    launch.kill()
  # Before, the survivor took SIGTERM for a preemption and waited ~35 s for its dead peer.
  assert waited < 15, waited
  assert launch.returncode == 137 and "process 1 of 2 exited with status 137" in err, err[-2000:]
