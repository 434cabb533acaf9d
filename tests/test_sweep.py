"""Studies: expansion into valid runs, and the sweep runner's idempotence and resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from lcx import config as config_lib
from lcx import overrides as overrides_lib
from lcx import report as report_lib
from lcx.report import claims as claims_lib
from lcx.report import plots as report_plots
from lcx.metrics import read_jsonl
from lcx.report import write_report
from lcx.runs import layout
from lcx.sweep import (Run, Stage, check_runs, launchers, load_sweep, product, run_sweep,
                       zip_)
from tests.conftest import ROOT


@pytest.mark.parametrize("scale", ["cpu", "cpu-more", "cpu-seeds", "cpu-babi", "small", "base"])
def test_memory_study_expands_into_valid_configs(scale, preset_tokenizer):
  """Every mechanism is an arm next to the window without memory and the full-length model, each
  run's config resolves, and its memory and window are the arm's."""
  from lcx import memory
  study, runs = load_sweep(str(ROOT / f"experiments/memory.py:{scale}"))
  assert study == f"memory-{scale}"
  arms = [r.name for r in runs]
  mechanisms = [m for m in memory.available() if m != "none"]
  if scale == "cpu-seeds":
    assert arms == [f"{a}-seed{s}" for s in (1, 2) for a in ("window", *mechanisms)]
  elif scale == "cpu":
    assert arms == ["window", "knn", "xl", "full"]
  elif scale == "cpu-babi":
    assert arms == ["window", "xl", "knn", "full"]
  elif scale == "cpu-more":  # the rest: both parts together are every arm
    assert arms == [m for m in mechanisms if m not in ("knn", "xl")] + ["alibi-window",
                                                                         "alibi-xl"]
  else:
    assert arms == ["window", *mechanisms, "full", "alibi-window", "alibi-xl"]
  for run in runs:
    stage = run.stages[0]
    path, _, arg = stage.config.partition(":")
    config = overrides_lib.apply(__import__("configs.pretrain", fromlist=["x"]).get_config(arg),
                                 list(stage.overrides))
    resolved = config_lib.resolve(config, jax.device_count())
    arm = run.name.split("-seed")[0]
    expected = {"window": "none", "full": "none", "alibi-window": "none", "alibi-xl": "xl"}
    assert resolved.model.memory == expected.get(arm, arm)
    assert (resolved.model.segment_len == 0) == (arm == "full")
    assert resolved.model.position == ("alibi" if arm.startswith("alibi") else "rope")
    babi = {t for t in resolved.data.retrieval.tasks if t.startswith("babi_")}
    assert babi == ({"babi_qa1", "babi_qa2"} if scale in ("cpu-babi", "small", "base") else set())
    # the bAbI part asks its trials again with training's entities
    train_space = [s for s in run.stages if "--retrieval_space=train" in s.args]
    assert [s.name for s in train_space] == (["eval-train-space"] if scale == "cpu-babi" else [])
    # retrieval by distance in the window's segments, the full-length arm too
    unit = [a for a in run.stages[1].args if a.startswith("--distance_unit=")]
    assert unit == [f"--distance_unit={dict(small=256, base=512).get(scale, 64)}"]
    # every arm with a memory is evaluated again with it wiped, on the evaluation's text
    wiped = [s for s in run.stages if s.name == "wiped"]
    assert len(wiped) == (resolved.model.memory != "none")
    for stage in wiped:
      assert stage.overrides == ("model.memory_reset=true",) and "--trials=0" in stage.args
      assert set(stage.args) - {"--trials=0"} == {a for a in run.stages[1].args
                                                   if a.startswith(("--max_tokens", "--lengths"))}


def test_product_and_zip():
  assert product(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
  assert zip_(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(ValueError, match="one length"):
    zip_(a=[1], b=[1, 2])


FIRST = ["none", "sinusoidal", "learned", "rope", "alibi"]
BIASES = ["fire", "kerple", "t5"]  # the rest of the registry: with a bias, then without
DATA_BIASES = ["fox", "fox-open"]  # a bias made from the data: FoX, its gates shut and open
ROTATIONS = ["xpos", "p-rope"]
EVERY = FIRST + BIASES + DATA_BIASES + ROTATIONS


def _resolved(stage):
  """A training stage's config with its overrides, resolved as the sweep would run it."""
  path, _, arg = stage.config.partition(":")
  module = {"configs/pretrain.py": "pretrain", "configs/finetune.py": "finetune"}[path]
  config = __import__(f"configs.{module}", fromlist=["get_config"]).get_config(arg)
  config = overrides_lib.apply(config, list(stage.overrides))
  if stage.kind == "finetune":
    config.init_from = "runs/x"  # the sweep sets it to the source stage's workdir
  return config_lib.resolve(config, jax.device_count())


@pytest.mark.parametrize("scale, names", [("cpu", FIRST), ("cpu-biases", BIASES),
                                          ("cpu-data-biases", [*DATA_BIASES, "alibi", "rope"]),
                                          ("cpu-rotations", ROTATIONS),
                                          ("cpu-babi", ["none", "rope", "alibi"]), ("small", EVERY),
                                          ("base", EVERY)])
def test_extrapolation_study_expands_into_valid_configs(scale, names, preset_tokenizer):
  """Every registered scheme is in the study (the CPU scale in two halves), each run's configs
  resolve, and each trains the scheme it is named after."""
  study, runs = load_sweep(str(ROOT / f"experiments/extrapolation.py:{scale}"))
  assert study == f"extrapolation-{scale}"
  assert [r.name for r in runs] == names
  if "rope" in names:  # the data biases' part has RoPE's plain run only, the cpu part's stages
    rope = next(r for r in runs if r.name == "rope")
    assert [s.name for s in rope.stages if s.kind == "finetune"] == (
        [] if scale in ("cpu-data-biases", "cpu-babi") else ["finetune-linear", "finetune-yarn"])
  for run in runs:
    # the bAbI part asks its trials again with training's entities
    train_space = [s for s in run.stages if "--retrieval_space=train" in s.args]
    assert [s.name for s in train_space] == (["eval-train-space"] if scale == "cpu-babi" else [])
    for stage in run.stages:
      if stage.kind == "evaluate":
        continue
      resolved = _resolved(stage)
      babi = {t for t in resolved.data.retrieval.tasks if t.startswith("babi_")}
      assert babi == ({"babi_qa1", "babi_qa2"} if scale in ("cpu-babi", "small", "base") else set())
      # The learned biases train at 3x the rate at CPU scale only (experiments/extrapolation.py).
      assert resolved.train.position_lr_scale == (
          3 if scale.startswith("cpu") and run.name in BIASES + DATA_BIASES else 1)
      if run.name == "p-rope":
        assert (resolved.model.position, resolved.model.rope.keep) == ("rope", 0.75)
      elif run.name == "fox-open":  # decay times from 2 tokens to 16x the training length
        assert resolved.model.position == "fox" and resolved.model.fox.decay_time_min == 2
        assert resolved.model.fox.decay_time_max == 16 * resolved.data.seq_len
      else:
        assert resolved.model.position == run.name or stage.kind == "finetune"


@pytest.mark.parametrize("scale", ["cpu-recipes", "small-recipes"])
def test_the_recipes_part_expands_into_valid_configs_and_commands(scale, preset_tokenizer,
                                                                  tmp_path):
  """RoPE, NoPE, RNoPE-SWA, iRoPE; from the RoPE run zero-shot YaRN, PoSE-YaRN, LongRoPE (searched)
  and DroPE (fitted): each training config resolves as named, and the search and fit run on their
  stage, their results applied by the evaluations after them."""
  from lcx.sweep.runner import stage_command
  study, runs = load_sweep(str(ROOT / f"experiments/extrapolation.py:{scale}"))
  if scale == "cpu-recipes":  # on a CPU in two parts into one folder: the local layers' second
    runs += load_sweep(str(ROOT / "experiments/extrapolation.py:cpu-recipes-local"))[1]
  assert [r.name for r in runs] == ["recipes-rope", "recipes-none", "recipes-rnope-swa",
                                    "recipes-irope"]
  resolved = {(run.name, stage.name): _resolved(stage) for run in runs for stage in run.stages
              if stage.kind in ("pretrain", "finetune")}
  swa, irope = resolved["recipes-rnope-swa", "pretrain"].model, resolved["recipes-irope",
                                                                          "pretrain"].model
  assert tuple(swa.position_layers) == ("rope",) * 3 + ("none",) and swa.window > 0
  assert irope.chunk > 0 and irope.temperature.kind == "llama4"
  assert tuple(irope.temperature.schemes) == ("none",)
  pose = resolved["recipes-rope", "finetune-pose-yarn"].data
  assert pose.pose_target_len == 4 * pose.seq_len
  assert resolved["recipes-rope", "finetune-drope"].model.position == "none"
  rope = runs[0]
  commands = {s.name: stage_command(study, rope, s, tmp_path) for s in rope.stages}
  assert commands["longrope-s4"][0] == "lcx.longrope" and commands["longrope-s4"][1][:3] == [
      "search", f"--workdir={tmp_path}/recipes-rope/pretrain", "--factor=4"]
  assert commands["drope-fit"][0] == "lcx.drope" and commands["drope-fit"][1][:2] == [
      "fit", f"--workdir={tmp_path}/recipes-rope/finetune-drope"]
  assert f"--overrides_from={tmp_path}/recipes-rope/finetune-drope/drope.json" in commands[
      "eval-drope"][1]
  assert f"--overrides_from={tmp_path}/recipes-rope/pretrain/longrope/s4.json" in commands[
      "eval-longrope-s4"][1]


def test_invalid_studies_are_refused():
  good = Stage("pretrain", "pretrain", "configs/pretrain.py:tiny")
  with pytest.raises(ValueError, match="repeated: a"):
    check_runs([Run("a", (good,)), Run("a", (good,))])
  with pytest.raises(ValueError, match="source 'pretrain' must name an earlier stage"):
    check_runs([Run("a", (Stage("eval", "evaluate", source="pretrain"), good))])
  with pytest.raises(ValueError, match="kind 'serve' is unknown; allowed: pretrain, finetune"):
    check_runs([Run("a", (Stage("x", "serve"),))])
  with pytest.raises(ValueError, match="does not exist"):
    load_sweep("experiments/missing.py:cpu")


def test_sweep_runs_idempotently_and_resumes(tiny_study, data_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  spec, out, states = tiny_study
  assert all(s == "done" for run in states.values() for s in run.values()), states
  assert json.loads((out / "status.json").read_text()) == states
  for run in ("alibi", "rope"):
    assert (out / run / "pretrain" / layout.EVAL / "eval.json").exists()
  assert (out / "rope" / "finetune-yarn" / layout.EVAL / "eval-finetune-yarn.json").exists()
  finetune = json.loads((out / "rope" / "finetune-yarn" / layout.CONFIG).read_text())
  assert finetune["init_from"] == str(out / "rope" / "pretrain")
  assert finetune["wandb"]["group"] == "tiny_study-" + data_dir
  assert finetune["wandb"]["tags"] == ["rope"] and finetune["wandb"]["job_type"] == "finetune"

  # Run again: every stage is finished, so nothing runs and nothing changes.
  logs = {p: p.stat().st_mtime_ns for p in out.rglob("*.log")}
  run_sweep(spec, out, progress=False)
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*.log")} == logs

  # An interrupted pretraining: only its step-3 checkpoint exists and it is not marked done.
  pretrain = out / "alibi" / "pretrain"
  straight = read_jsonl(pretrain / layout.METRICS)
  shutil.rmtree(pretrain / layout.CHECKPOINTS / "6")
  os.remove(out / "alibi" / "pretrain.done")
  os.remove(pretrain / layout.SUMMARY)
  run_sweep(spec, out, only="alibi", progress=False)
  assert set(json.loads((out / "status.json").read_text())) == {"alibi", "rope"}  # rope's kept
  resumed = read_jsonl(pretrain / layout.METRICS)
  assert [r["step"] for r in resumed] == list(range(1, 7))
  assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-6)
  assert "resumed from" in (out / "alibi" / "pretrain.log").read_text()

  # The report of the finished study.
  report, table = write_report(out)
  text = report.read_text()
  for label in ("| alibi |", "| rope |", "| rope FT yarn x4 |"):
    assert label in table and label in text
  cost = next(line for line in table.split("pretrain tokens")[1].splitlines()
              if line.startswith("| rope FT yarn x4 |"))
  assert cost.startswith("| rope FT yarn x4 | 1.54k | ")  # pretrain: 6 steps x 8 x 32 tokens
  assert "| 1.02k | " in cost  # the fine-tune's own: 2 steps x 8 x 64
  for name in ("overview", "perplexity_vs_length", "loss_by_position", "quality_vs_compute",
               "retrieval_vs_length", "retrieval_passkey", "retrieval_niah_single"):
    assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert f"figures/{name}.png" in text
  # Retrieval per task: 1x (32 tokens) holds no prompt, so no column; 2x (64) holds both tasks'
  # python style.
  single = table.split("**Retrieval: niah_single**")[1]
  assert single.split("\n")[2] == "| variant | 2x | effective length | longest at >= 90% |"
  row = next(line for line in single.splitlines() if line.startswith("| alibi |"))
  assert "%" in row.split(" | ")[1]
  claims = text.split("## Claims vs measured")[1].split("## Figures")[0]
  assert "| Sinusoidal positions fail past the training length | needs sinusoidal | cannot tell" \
      in claims and claims.count("\n| ") == 2 + len(claims_lib.CLAIMS)  # header, rule, claims
  looks = list(report_lib.looks(report_lib.collect(out)[0]).values())
  assert len({(k["color"], k["marker"]) for k in looks}) == len(looks) == 3
  assert text.startswith(f"# Study report: {load_sweep(tiny_study[0])[0]}\n")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no evaluated lcx runs"):
    write_report(tmp_path / "empty")
  with pytest.raises(ValueError, match="is not a directory"):
    write_report(tmp_path / "missing")


def test_ctrl_c_stops_the_sweep_and_its_stage_in_one_line(data_dir, tmp_path):
  """Ctrl-C (SIGINT to the terminal's process group: the sweep and its stage) stops the stage at
  the end of its step with a checkpoint of it; the sweep marks it stopped and says so in one line
  instead of a KeyboardInterrupt traceback."""
  out = tmp_path / "study"
  sweep = subprocess.Popen(
      [sys.executable, "-m", "lcx.sweep", f"tests/tiny_study.py:{data_dir}", f"--out={out}",
       "--only=alibi", "--config.train.steps=100000"], cwd=ROOT, start_new_session=True,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    metrics = out / "alibi" / "pretrain" / layout.METRICS
    deadline = time.time() + 240
    while time.time() < deadline and sweep.poll() is None and (
        len(read_jsonl(metrics)) < 4 if metrics.exists() else True):
      time.sleep(0.2)
    assert sweep.poll() is None, sweep.communicate()
    os.killpg(sweep.pid, signal.SIGINT)
    _, err = sweep.communicate(timeout=180)
  finally:
    if sweep.poll() is None:
      os.killpg(sweep.pid, signal.SIGKILL)
  assert sweep.returncode == 130 and "Traceback" not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("lcx.sweep: interrupted during alibi/pretrain, which stopped") and (
      "the same command resumes the study from there" in last), last
  assert json.loads((out / "status.json").read_text())["alibi"]["pretrain"] == "stopped"
  stage_log = (out / "alibi" / "pretrain.log").read_text()
  # the stage stopped at the end of a step and saved it (an interrupt anywhere else could hang),
  # a step after the 4 it had logged when interrupted (how many more it ran depends on the load)
  assert "lcx.train: interrupted; saved a checkpoint at step" in stage_log
  step = int(stage_log.split("saved a checkpoint at step ")[-1].split(",")[0])
  assert step >= 4 and (out / "alibi" / "pretrain" / layout.CHECKPOINTS / str(step)).is_dir()


def test_report_of_a_moved_half_finished_study_lists_what_is_missing(tiny_study, tmp_path):
  _, out, _ = tiny_study
  # The study as if it had been run in `produced` (the paths recorded inside point there), then
  # moved to `moved`: nothing at the recorded paths exists any more.
  produced, moved = tmp_path / "produced", tmp_path / "moved"
  shutil.copytree(out, produced, ignore=shutil.ignore_patterns(layout.CHECKPOINTS, "wandb"))
  for path in produced.rglob("*.json"):
    path.write_text(path.read_text().replace(str(out), str(produced)))
  produced.rename(moved)
  (moved / "rope" / "finetune-yarn" / layout.EVAL / "eval-finetune-yarn.json").unlink()  # not run yet
  cut = moved / "alibi" / "pretrain" / layout.EVAL / "eval.json"
  cut.write_text(cut.read_text()[:200])  # a crash mid-write
  report, table = write_report(moved)
  assert "| rope |" in table and "| rope FT yarn x4 |" not in table
  assert "- rope/eval-finetune-yarn: not finished, no outputs yet (sweep status: done)" in table
  assert "- alibi/pretrain/eval/eval.json: left out" in table and "not valid JSON" in table
  assert "Not in this report" in report.read_text()
  (moved / "rope" / "pretrain" / layout.EVAL / "eval.json").unlink()
  with pytest.raises(ValueError, match="holds no evaluated lcx runs.*eval.json is not valid JSON"):
    write_report(moved)


def test_a_tuning_stage_is_finished_by_the_sweeps_marker_of_its_kind(tmp_path):
  """lcx.longrope / lcx.drope write into the run they tune, so a report knows them finished by
  the sweep's marker, which names the stage's kind; an evaluation's marker alone does not do."""
  run = tmp_path / "recipes-rope"
  run.mkdir()
  (tmp_path / "status.json").write_text(json.dumps(
      {"recipes-rope": {"longrope-s4": "done", "drope-fit": "done", "eval-longrope-s4": "done"}}))
  (run / "longrope-s4.done").write_text("1765000000.0 longrope\n")
  (run / "drope-fit.done").write_text("1765000000.0\n")  # a marker of an older sweep: no kind
  (run / "eval-longrope-s4.done").write_text("1765000000.0 evaluate\n")
  missing = report_lib.unfinished_stages(tmp_path)
  assert [line.split(":")[0] for line in missing] == ["recipes-rope/drope-fit",
                                                       "recipes-rope/eval-longrope-s4"]


def test_dry_run_prints_one_command_per_stage(capsys, tmp_path):
  run_sweep(str(ROOT / "experiments/extrapolation.py:cpu"), tmp_path, dry_run=True)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 5 * 2 + 4 + 2 * 2
  assert all(" -m lcx.train " in line or " -m lcx.evaluate " in line for line in lines)
  assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_the_sweeps_overrides_reach_every_training_stage_and_are_checked_first(capsys, tmp_path):
  """--config.a.b=value on the sweep's command line: added to each pretrain and fine-tune stage
  (evaluations read their run's saved config); an unknown field stops the study before a stage
  runs; a study whose tokenizer is missing names the command that trains it on its corpus."""
  spec = str(ROOT / "experiments/extrapolation.py:cpu")
  run_sweep(spec, tmp_path, dry_run=True, only="rope", overrides=("data.text_key=body",))
  lines = capsys.readouterr().out.strip().splitlines()
  trains = [line for line in lines if " -m lcx.train " in line]
  assert len(trains) == 3 and all("--config.data.text_key=body" in line for line in trains)
  assert not any("text_key" in line for line in lines if " -m lcx.evaluate " in line)
  with pytest.raises(ValueError, match="run 'none' stage 'pretrain': config.data.txt_key does "
                                       "not exist; allowed fields there: .*text_key"):
    run_sweep(spec, tmp_path, dry_run=True, overrides=("data.txt_key=body",))
  missing = tmp_path / "missing.model"
  with pytest.raises(ValueError, match=rf"sentencepiece:{missing}, which does not exist yet: "
                                       r"train it with\n  python -m lcx.tokenizer train --config "
                                       r"configs/pretrain.py:tiny --config.data.text_dir=/books$"):
    run_sweep(spec, tmp_path, dry_run=True, overrides=(
        f"data.tokenizer=sentencepiece:{missing}", "data.text_dir=/books", "train.steps=5"))
  assert not any(tmp_path.iterdir())


def test_launchers_are_parsed_or_refused_with_the_allowed_values():
  assert launchers.parse("multiprocess:2") == launchers.Launcher("multiprocess", ("2",))
  assert launchers.parse("slurm", "--partition=gpu --time=4:00:00").extra == (
      "--partition=gpu", "--time=4:00:00")
  for bad in ("multiprocess", "multiprocess:0", "tpu_pod:name", "kubernetes"):
    with pytest.raises(ValueError, match="is not one of: local, multiprocess:N, slurm, tpu_pod"):
      launchers.parse(bad)


def test_dry_run_prints_each_stage_as_the_launcher_runs_it(capsys, tmp_path):
  spec = str(ROOT / "experiments/extrapolation.py:cpu")
  run_sweep(spec, "/shared/study", dry_run=True, only="rope",
            launcher=launchers.parse("slurm", "--partition=gpu --nodes=4"))
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 10 and all(line.startswith("sbatch --parsable ") for line in lines)
  finetune = next(line for line in lines if "/rope/finetune-yarn.log" in line)
  assert "'--dependency=afterok:<job of rope/pretrain>'" in finetune
  assert "--workdir=/shared/study/rope/finetune-yarn" in finetune  # the path as given
  evaluate = next(line for line in lines if "--name=eval-finetune-yarn" in line)
  assert "<job of rope/finetune-yarn>" in evaluate
  assert evaluate.index("--nodes=4") < evaluate.index("--nodes=1")  # evaluation: one host
  assert "launch/slurm.sbatch evaluate --workdir=/shared/study/rope/finetune-yarn" in evaluate

  run_sweep(spec, "/mnt/lcx/study", dry_run=True, only="alibi",
            launcher=launchers.parse("tpu_pod:my-tpu:us-central2-b"))
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith("SETUP=0 WORKERS=all ") and "tpu_pod.sh my-tpu us-central2-b --config" in lines[0]
  assert lines[1].startswith("SETUP=0 WORKERS=0 ") and "us-central2-b evaluate --workdir" in lines[1]


def test_slurm_launcher_submits_the_study_as_a_chain_of_jobs(tmp_path, monkeypatch):
  """sbatch here is a stand-in that records each submission and answers with a job id the way
  `sbatch --parsable` does; the sweep must chain each stage to its source's job."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(
      "#!/usr/bin/env bash\n"
      f"n=$(( $(wc -l < {tmp_path}/submitted 2>/dev/null || echo 0) + 101 ))\n"
      f"echo \"$n $*\" >> {tmp_path}/submitted\n"
      "echo \"$n;cluster\"\n")
  os.chmod(bin_dir / "sbatch", 0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  out = tmp_path / "study"
  states = run_sweep(str(ROOT / "experiments/extrapolation.py:cpu"), out, only="rope",
                     launcher=launchers.parse("slurm"), progress=False)
  assert states["rope"]["pretrain"] == "submitted (job 101)"
  jobs = dict(line.split(" ", 1) for line in (tmp_path / "submitted").read_text().splitlines())
  assert len(jobs) == 10 and "--dependency" not in jobs["101"]
  by_name = {next(a.split("=", 1)[1] for a in args.split() if a.startswith("--job-name=")): job
             for job, args in jobs.items()}
  eval_yarn = jobs[by_name["extrapolation-cpu/rope/eval-finetune-yarn"]]
  assert f"--dependency=afterok:{by_name['extrapolation-cpu/rope/finetune-yarn']} " in eval_yarn
  # A stage whose outputs show it finished is not submitted again.
  (tmp_path / "submitted").unlink()
  pretrain = out / "rope" / "pretrain"
  pretrain.mkdir(parents=True)
  (pretrain / layout.SUMMARY).write_text(json.dumps({"preempted": False}))
  states = run_sweep(str(ROOT / "experiments/extrapolation.py:cpu"), out, only="rope",
                     launcher=launchers.parse("slurm"), progress=False)
  assert states["rope"]["pretrain"] == "done"
  assert not any("--dependency" in line and "job-name=extrapolation-cpu/rope/finetune-yarn" in line
                 for line in (tmp_path / "submitted").read_text().splitlines())


def test_multiprocess_launcher_trains_each_stage_over_two_processes(tiny_study, tmp_path,
                                                                    monkeypatch):
  """The study of the tiny_study fixture (one process, one device), its alibi run again with
  every training stage on 2 processes x 4 devices: the same losses."""
  monkeypatch.chdir(ROOT)
  spec, single, _ = tiny_study
  out = tmp_path / "mp"
  monkeypatch.setenv("LCX_LOG_DIR", str(tmp_path / "logs"))
  states = run_sweep(spec, out, only="alibi", launcher=launchers.parse("multiprocess:2"),
                     progress=False)
  assert states == {"alibi": {"pretrain": "done", "eval": "done"}}, (
      out / "alibi" / "pretrain.log").read_text()[-3000:]
  assert (tmp_path / "logs" / "process_1.log").stat().st_size > 0  # the second process ran
  losses = [r["loss"] for r in read_jsonl(out / "alibi" / "pretrain" / layout.METRICS)]
  expected = [r["loss"] for r in read_jsonl(single / "alibi" / "pretrain" / layout.METRICS)]
  assert losses == pytest.approx(expected, rel=2e-5)
  assert (out / "alibi" / "pretrain" / layout.EVAL / "eval.json").exists()


def test_the_report_names_memory_arms_and_compares_their_late_segments():
  """Runs in segments are labelled by mechanism (or as the window alone) and seed; the segment
  table subtracts the window of the same scheme and seed from each arm's later segments."""
  def variant(scheme, memory, seed, losses, reset=False, data=None):
    results = {"scheme": scheme, "config": {"seed": seed, "data": data or {}, "model": {
        "memory": memory, "segment_len": 64, "memory_reset": reset}},
               "perplexity": [{"multiple": 1.0, "by_segment": {"segment_len": 64,
                                                               "loss": losses}}]}
    return report_lib.Variant(report_lib.label(results, False), results, {}, None)

  variants = [variant("rope", "none", 0, [3.0, 3.0, 3.0]), variant("rope", "xl", 0, [3.0, 2.5, 2.0]),
              variant("rope", "none", 1, [3.0, 2.0, 2.0]), variant("rope", "xl", 1, [3.0, 2.5, 2.5]),
              variant("rope", "xl", 0, [3.0, 3.0, 2.5], reset=True)]
  assert [v.label for v in variants] == ["rope window 64", "rope + xl", "rope window 64 seed 1",
                                         "rope + xl seed 1", "rope + xl (memory wiped)"]
  table = "\n".join(report_lib.segment_table(variants))
  # vs window: 2.25 - 3.0; vs wiped: 2.25 - 2.75 (its own weights, memory wiped)
  assert "| rope + xl | 3.000 | 2.500 | 2.000 | 2.250 | -0.750 | -0.500 |" in table
  assert "| rope + xl seed 1 | 3.000 | 2.500 | 2.500 | 2.500 | +0.500 | - |" in table
  assert "| rope window 64 | 3.000 | 3.000 | 3.000 | 3.000 | - | - |" in table
  assert "| rope + xl (memory wiped) | 3.000 | 3.000 | 2.500 | 2.750 | - | - |" in table
  # the arm over its seeds: mean of -0.750 and +0.500, their std and range; wiped: seed 0 only
  assert ("| rope + xl | 2 | -0.125 | 0.625 | -0.750 | +0.500 | -0.500 | 0.000 | -0.500 | "
          "-0.500 |") in table
  # trained on other data (a study's retrieval mixture beside its text-only part): compared with
  # the window trained on that data only, and over seeds apart
  mixture = {"retrieval": {"fraction": 0.75}}
  table = "\n".join(report_lib.segment_table(
      variants + [variant("rope", "none", 0, [3.0, 2.0, 2.0], data=mixture),
                  variant("rope", "xl", 0, [3.0, 2.5, 2.5], data=mixture)]))
  assert "| rope + xl | 3.000 | 2.500 | 2.000 | 2.250 | -0.750 | -0.500 |" in table
  assert "| rope + xl | 3.000 | 2.500 | 2.500 | 2.500 | +0.500 | - |" in table
  assert "| rope + xl | 1 | +0.500 | 0.000 | +0.500 | +0.500 | - | - | - | - |" in table


def test_the_report_reads_json_without_jax():
  """lcx.report writes markdown and PNGs from JSON: it imports no JAX, no model and no kernel."""
  script = ("import sys, lcx.report, lcx.report.__main__\n"
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', "
            "'lcx.model', 'lcx.attention', 'lcx.config'))))\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
  assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_report_tells_apart_runs_of_one_scheme_by_what_differs():
  """Two rope runs with other learning rates are not two identical "rope" rows; settings that
  only say where or how a run was computed do not count; nothing differing: the run's folder."""
  def variant(learning_rate, mesh_data=8, seq_len=32):
    results = {"scheme": "rope", "overrides": [], "config": {
        "seed": 0, "train": {"learning_rate": learning_rate, "log_every": 1},
        "data": {"seq_len": seq_len, "data_dir": f"/tmp/{learning_rate}"},
        "mesh": {"data": mesh_data}, "model": {"position": "rope", "max_len": seq_len}}}
    return report_lib.Variant(report_lib.label(results, False), results, {}, None)

  variants = [variant(0.003), variant(0.001, mesh_data=1), variant(0.003, seq_len=64)]
  report_lib.distinguish(variants, ["a/pretrain/eval", "b/pretrain/eval", "c/pretrain/eval"])
  assert [v.label for v in variants] == [
      "rope seq_len=32 learning_rate=0.003", "rope seq_len=32 learning_rate=0.001",
      "rope seq_len=64 learning_rate=0.003"]
  twins = [variant(0.003), variant(0.003, mesh_data=2)]
  report_lib.distinguish(twins, ["a/pretrain/eval", "b/pretrain/eval"])
  assert [v.label for v in twins] == ["rope (a/pretrain/eval)", "rope (b/pretrain/eval)"]


def test_the_report_tables_and_plots_retrieval_by_needle_distance(tmp_path):
  """Distances recorded per grid (lcx.evaluate.retrieval.by_distance) are pooled over styles
  into buckets, weighted by trials; a variant without distances is left out of the table."""
  def grid(style, distances):
    return {"task": "passkey", "style": style, "lengths": [256], "depths": [0.0],
            "exact": [[0.0]], "ranked": [[0.0]], "longest_at_90": None, "trials": 1,
            "by_distance": {"unit": 64, "distances": distances}}

  knn = {"scheme": "rope", "base_length": 256, "config": {"model": {
      "memory": "knn", "segment_len": 64}}, "perplexity": [], "sliding": [], "retrieval": {
          "passkey/python": grid("python", {"0": {"exact": 1.0, "ranked": 1.0, "trials": 2},
                                            "5": {"exact": 0.5, "ranked": 1.0, "trials": 2}}),
          "passkey/prose": grid("prose", {"6": {"exact": 0.0, "ranked": 0.5, "trials": 2}})}}
  full = {"scheme": "rope", "base_length": 256, "config": {}, "perplexity": [], "sliding": [],
          "retrieval": {"passkey/python": {**grid("python", {}), "by_distance": None}}}
  del full["retrieval"]["passkey/python"]["by_distance"]
  variants = [report_lib.Variant(report_lib.label(r, False), r, {"flops_seen": 1.0}, None)
              for r in (knn, full)]
  assert variants[0].by_distance("passkey", "exact") == {"0": (1.0, 2), "4-7": (0.25, 4)}
  assert variants[1].by_distance("passkey", "exact") == {}
  table = "\n".join(report_lib.distance_tables(variants))
  assert "| variant | 0 | 4-7 |" in table
  assert "| rope + knn | 100% / 100% (2) | 25% / 75% (4) |" in table
  assert "| rope |" not in table
  path = report_plots._distance_curves(variants, ["passkey"], report_lib.looks(variants), "t",
                                      tmp_path)
  assert path.stat().st_size > 0


def test_the_report_says_what_each_memory_costs_next_to_its_window():
  """Keys per query come from the model's own count; step time is the window's tokens/s over the
  arm's; an ablation (memory wiped) gets no row of its own."""
  def variant(memory, tokens_per_second, reset=False):
    c = __import__("configs.pretrain", fromlist=["x"]).get_config("tiny")
    c.unlock()
    c.data.seq_len, c.model.segment_len, c.model.memory = 256, 64, memory
    c.model.memory_reset = reset
    resolved = config_lib.resolve(c, 1)
    results = {"run": f"runs/{memory}/pretrain",  # the wiped memory's too: the arm's run
               "scheme": "rope", "config": resolved.to_dict(), "train_length": 256,
               "scoring_tokens_per_second": 5000.0,  # what the evaluation records:
               "memory_keys_per_query": config_lib.model_config(resolved).attention_context(256)[1]}
    return report_lib.Variant(report_lib.label(results, False), results,
                              {"tokens_per_second": tokens_per_second,
                               "peak_memory_bytes": 2 ** 30}, None)

  table = "\n".join(report_lib.memory_cost_table(
      [variant("none", 100.0), variant("xl", 80.0), variant("xl", 80.0, reset=True)]))
  assert "| rope window 64 | 0 | 100 | 1.00 | 5.00k | 1.00 GiB |" in table
  assert "| rope + xl | 64 | 80 | 1.25 | 5.00k | 1.00 GiB |" in table
  assert "wiped" not in table
