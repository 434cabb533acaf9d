"""What a training run checks about its workdir before it builds anything.

- the workdir is a writable directory (a file, a read-only mount: one line, nothing built);
- one training at a time: a lock that the operating system releases when its holder dies, so a
  lock left by a killed process is stale by construction;
- a resumed run keeps its architecture and data: fields that differ from the saved config.json
  are refused with the list, unless config.resume_changes='allow'; schedule fields may change and
  are logged;
- nothing starts from step 0 over checkpoints, even ones set aside as damaged.
"""
import fcntl
import json
import logging
import os
import pathlib
import socket
import time

import ml_collections

from lcx.runs.layout import CHECKPOINTS, CONFIG, LOCK, QUARANTINE
from lcx.config import ConfigError, fill_missing
from lcx.files import naming

log = logging.getLogger(__name__)
# Fields that only choose how the same computation runs, or that act only at a fresh start.
_FREE_MODEL_FIELDS = ("attention", "attention_block", "remat", "scan_layers")
_FRESH_START_ONLY = ("init_from", "init_optimizer", "finetune_changes")


class WorkdirError(ConfigError):
  """The workdir cannot hold this run (not writable, in use, or holding a different run)."""


def prepare(workdir) -> pathlib.Path:
  """The workdir as an existing directory this process can write to."""
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir {path} is a file, not a directory; pass a directory")
  probe = path / f".lcx-write-test-{socket.gethostname()}-{os.getpid()}"  # one per process
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok\n")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"--workdir {path} is not writable ({e.strerror or e}); pass a directory "
                       "this user can write to") from None
  return path


class TrainingLock:
  """An exclusive lock on workdir/.lcx-train.lock held for the life of a training process.

  POSIX record locks (lockf) also work on NFS, where SLURM runs keep their workdirs.
  """

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / LOCK
    self.file = None

  def __enter__(self):
    f = open(self.path, "a+")
    try:
      fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise WorkdirError(f"--workdir {self.path.parent} is in use by another training ({holder}); "
                         "wait for it to end, stop it, or pass another --workdir") from None
    f.seek(0)
    f.truncate()
    with naming(self.path):
      f.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
      f.flush()
    self.file = f
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      fcntl.lockf(self.file, fcntl.LOCK_UN)
      self.file.close()
      self.file = None


def remove_if_unused(workdir: pathlib.Path) -> None:
  """Removes a workdir that holds nothing but its (released) training lock."""
  if {p.name for p in workdir.iterdir()} <= {LOCK}:
    (workdir / LOCK).unlink(missing_ok=True)
    workdir.rmdir()


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _fixed(name: str) -> bool:
  """Whether a field defines the run (architecture, data, seed): not to be changed on resume."""
  section, _, field = name.partition(".")
  if section == "model":
    return field not in _FREE_MODEL_FIELDS
  if section == "data":
    return field != "data_dir"  # the same dataset may live elsewhere on another machine
  return name == "seed"


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
  """(fixed, free) differences between a saved config and the current one, 'field: a -> b' each.

  Fields the saved config does not have (it predates them) are not compared.
  """
  old, new = _flatten(saved), _flatten(json.loads(json.dumps(current)))
  fixed, free = [], []
  for name in sorted(old.keys() & new.keys()):
    if old[name] != new[name] and name != "resume_changes":
      (fixed if _fixed(name) else free).append(f"{name}: {old[name]!r} -> {new[name]!r}")
  return fixed, free


def has_checkpoints(workdir: pathlib.Path) -> bool:
  """Whether the workdir holds checkpoints, set-aside ones included."""
  # In checkpoints/, a finished save is a folder named by its step (an unfinished one has a
  # suffix); anything in corrupt_checkpoints/ was a checkpoint.
  return (any(p.name.isdigit() for p in (workdir / CHECKPOINTS).glob("*"))
          or any((workdir / QUARANTINE).glob("*")))


def check_resume(workdir: pathlib.Path, config, is_main: bool = True) -> None:
  """Refuses to resume a run whose architecture or data the config changes; logs schedule changes.

  With config.resume_changes='allow' the changes are logged and the main process keeps the old
  config as config.before-<time>.json beside the new one.
  """
  saved_path = workdir / CONFIG
  if not has_checkpoints(workdir):
    return
  try:
    saved = json.loads(saved_path.read_text())
  except FileNotFoundError:  # none saved, or the main process has just moved it aside
    return
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{saved_path} is not valid JSON ({e}); restore it from a copy, or pass "
                       "another --workdir") from None
  # Fields the run predates count as the run had them (a YaRN run's ramp, for one).
  saved = fill_missing(ml_collections.ConfigDict(saved)).to_dict()
  fixed, free = config_changes(saved, config.to_dict())
  for change in (c for c in free if not c.startswith(_FRESH_START_ONLY)):
    log.info("resuming with a changed setting: %s", change)
  for change in (c for c in free if c.startswith(_FRESH_START_ONLY)):
    log.info("ignored on resume (the run continues from its own checkpoint): %s", change)
  if not fixed:
    return
  if config.resume_changes != "allow":
    raise WorkdirError(
        f"{workdir} holds a run with another architecture or data: {'; '.join(fixed)}. Pass "
        "--config.resume_changes=allow to continue it with these changes, or use a new --workdir")
  if not is_main:
    return
  kept = workdir / f"config.before-{time.strftime('%Y%m%d-%H%M%S')}.json"
  saved_path.replace(kept)
  log.warning("resuming with changed architecture or data (config.resume_changes=allow): %s; the "
              "previous config is kept as %s", "; ".join(fixed), kept)
