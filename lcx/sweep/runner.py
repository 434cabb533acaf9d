"""Running a study stage by stage: each stage one command, run here or through a launcher,
skipped once finished, its state in DIR/status.json; Ctrl-C stops the stage and the sweep."""
import collections
import json
import os
import pathlib
import shlex
import signal
import subprocess
import time

import tqdm

from lcx.cli import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from lcx.files import write_atomic
from lcx.runs import layout
from lcx.sweep import launchers
from lcx.sweep.study import TUNES, Run, Stage, check_train_configs, load_sweep, with_overrides


def stage_command(study: str, run: Run, stage: Stage, out: pathlib.Path) -> tuple[str, list[str]]:
  """(module, flags) of one stage; W&B groups by study, types by stage kind, tags by run."""
  wandb = [f"wandb.group={study}", f"wandb.tags={tuple(run.tags)!r}"]
  if stage.kind == "evaluate":  # named <run>/<stage> by lcx.evaluate
    wandb.append(f"wandb.name={run.name}")
    args = [a.replace("--overrides_from=", f"--overrides_from={out / run.name}/", 1)
            for a in stage.args]  # relative to the run's folder in the study
    return "lcx.evaluate", [f"--workdir={out / run.name / stage.source}", f"--name={stage.name}",
                            *args, *(f"--config.{o}" for o in (*stage.overrides, *wandb))]
  if stage.kind in TUNES:  # their results go into the stage they tune
    verb = {"longrope": "search", "drope": "fit"}[stage.kind]
    return f"lcx.{stage.kind}", [verb, f"--workdir={out / run.name / stage.source}", *stage.args]
  flags = [f"--config={stage.config}", f"--workdir={out / run.name / stage.name}", *stage.args]
  overrides = [*stage.overrides, *wandb, f"wandb.name={run.name}/{stage.name}",
               f"wandb.job_type={stage.kind}"]
  if stage.kind == "import":  # the source is the first of args
    return "lcx.convert", ["import", *flags, *(f"--config.{o}" for o in overrides)]
  if stage.kind == "finetune":
    overrides.append(f"init_from={out / run.name / stage.source}")
  return "lcx.train", flags + [f"--config.{o}" for o in overrides]


def finished(out: pathlib.Path, run: Run, stage: Stage) -> bool:
  """Whether a stage has run to its end: the sweep marked it (it saw it exit 0), or its outputs
  say so (a stage run elsewhere, e.g. a SLURM job): a training that stopped on its last step and
  not on a preemption signal, an evaluation that wrote its results."""
  if (out / run.name / f"{stage.name}.done").exists():
    return True
  if stage.kind == "evaluate":
    return (out / run.name / stage.source / layout.EVAL / f"{stage.name}.json").exists()
  summary = out / run.name / stage.name / layout.SUMMARY
  return summary.exists() and not json.loads(summary.read_text()).get("preempted", True)


class Status:
  """DIR/status.json: {run: {stage: pending | running | done | failed}}."""

  def __init__(self, out: pathlib.Path, runs: list[Run]):
    self.path = out / "status.json"
    saved = {}
    if self.path.exists():
      try:
        saved = json.loads(self.path.read_text())
      except json.JSONDecodeError:
        tqdm.tqdm.write(f"{self.path} is not valid JSON; finished stages are found by their outputs")
    self.states = {r.name: {s.name: saved.get(r.name, {}).get(s.name, "pending") for s in r.stages}
                   for r in runs}
    # Runs left out this time (--only) keep their entries.
    self.others = {run: stages for run, stages in saved.items() if run not in self.states}

  def set(self, run: str, stage: str, state: str) -> None:
    self.states[run][stage] = state
    write_atomic(self.path, json.dumps({**self.others, **self.states}, indent=2) + "\n")


def run_sweep(spec: str, out, *, dry_run: bool = False, only: str = "", progress: bool = True,
              launcher: launchers.Launcher = launchers.Launcher("local"),
              overrides: tuple[str, ...] = ()) -> dict:
  """Runs (or, with a submitting launcher, submits) every stage not yet finished, in order;
  returns the state of every stage."""
  study, runs = load_sweep(spec)
  runs = with_overrides(runs, tuple(overrides))
  if only:
    runs = [r for r in runs if r.name == only]
    if not runs:
      raise ValueError(f"--only {only!r} names no run of {spec}")
  out = pathlib.Path(out).expanduser()
  # Remote machines find the study by the path as given (a shared mount); locally, it is absolute.
  out = out if launcher.remote and out.is_absolute() else out.resolve()
  check_train_configs(runs, local_files=not launcher.remote)  # a pod's disks are not this one's
  if dry_run:
    for run in runs:
      jobs = {}
      for stage in run.stages:
        jobs[stage.name] = f"<job of {run.name}/{stage.name}>"
        argv, env = launcher.command(*stage_command(study, run, stage, out),
                                     job_name=f"{study}/{run.name}/{stage.name}",
                                     log=out / run.name / f"{stage.name}.log",
                                     after=(jobs[stage.source],) if stage.source else ())
        print(shlex.join([*(f"{k}={v}" for k, v in env.items()), *argv]))
    return {}
  out.mkdir(parents=True, exist_ok=True)
  status = Status(out, runs)
  stages = [(run, stage) for run in runs for stage in run.stages]
  bar = tqdm.tqdm(total=len(stages), desc=study, unit="stage", disable=not progress)
  started = time.perf_counter()
  jobs = {}  # (run, stage) -> the id of the job submitted for it
  with bar:  # closed before an interruption's message, which is then the last line
    for run, stage in stages:
      bar.set_postfix_str(f"{run.name}/{stage.name}")
      state = _run_stage(study, run, stage, out, launcher, status, jobs)
      status.set(run.name, stage.name, state)
      bar.update(1)
  if progress:
    counts = collections.Counter(s for r in status.states.values() for s in r.values())
    print(f"{study}: {', '.join(f'{n} {state}' for state, n in sorted(counts.items()))} of "
          f"{len(stages)} stages in {time.perf_counter() - started:.0f} s; status in {status.path}")
  return status.states


class Interrupted(Exception):
  """Ctrl-C stopped the sweep (and the stage it was running)."""


# Ctrl-C at a terminal reaches the stage too (one process group) and it stops within a step; a
# stage still running after this long did not get it (the sweep alone was signalled).
_STOP_GRACE_S = 60


def _stop(child: subprocess.Popen) -> int:
  """Waits for an interrupted stage to stop (it saves nothing half-way); tells it to if it goes
  on, and kills it on a second Ctrl-C."""
  try:
    try:
      return child.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
      child.send_signal(signal.SIGINT)
      return child.wait()
  except KeyboardInterrupt:
    child.kill()
    return child.wait()


def _run_stage(study, run, stage, out, launcher, status, jobs) -> str:
  """Runs or submits one stage; returns its state: done, failed, stopped (preempted: run the
  sweep again to resume), skipped (its source failed), or submitted (job N)."""
  if finished(out, run, stage):
    return "done"
  source = status.states[run.name].get(stage.source)
  if source in ("failed", "stopped", "skipped"):
    return "skipped"  # nothing to build on
  log = out / run.name / f"{stage.name}.log"
  log.parent.mkdir(parents=True, exist_ok=True)
  module, flags = stage_command(study, run, stage, out)
  after = (jobs[run.name, stage.source],) if (run.name, stage.source) in jobs else ()
  argv, env = launcher.command(module, flags, job_name=f"{study}/{run.name}/{stage.name}",
                               log=log, after=after)
  env = {**os.environ, **env}
  if launcher.submits:
    jobs[run.name, stage.name] = launchers.submit(argv, env)
    return f"submitted (job {jobs[run.name, stage.name]})"
  status.set(run.name, stage.name, "running")
  with open(log, "a") as f:
    child = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
      code = child.wait()
    except KeyboardInterrupt:
      code = _stop(child)
      interrupted = True
    else:  # Ctrl-C may reach the stage alone, or the sweep only after the stage has exited
      interrupted = code == INTERRUPTED_EXIT_CODE
    if interrupted:
      status.set(run.name, stage.name, "stopped")
      raise Interrupted(f"interrupted during {run.name}/{stage.name}, which stopped (exit {code}; "
                        f"log {log}) keeping its checkpoints; the same command resumes the study "
                        "from there")
  if code == 0:
    # the time and the stage's kind (a report knows a tuning stage finished by it)
    (out / run.name / f"{stage.name}.done").write_text(f"{time.time()} {stage.kind}\n")
    return "done"
  tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
  if code == PREEMPTED_EXIT_CODE:
    tqdm.tqdm.write(f"{run.name}/{stage.name} was preempted and saved a checkpoint; run the sweep "
                    f"again to resume it")
    return "stopped"
  tqdm.tqdm.write(f"{run.name}/{stage.name} failed (exit {code}); log {log}:\n{tail}")
  return "failed"
