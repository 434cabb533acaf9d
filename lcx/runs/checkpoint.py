"""Orbax checkpoints of the train state plus a small JSON of counters; resume from the latest good.

Three kinds of trouble are told apart on restore:
- a checkpoint that does not fit the model asked for (shapes, structure): CheckpointMismatch, one
  line naming the parameters that differ; the checkpoint is left alone;
- a damaged one (unreadable files, or values that differ from the checksums saved with it):
  training moves it aside to workdir/corrupt_checkpoints/ (nothing is deleted) and tries the
  previous one; a read-only reader (evaluation, a fine-tune's source) skips it and says so;
- none at all: None.
A save that fails in the background (disk full, permissions) is raised as SaveFailed at the next
step; earlier checkpoints stay, since orbax removes old steps only after a new one is committed.
"""
import logging
import pathlib
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lcx.config import ConfigError
from lcx.files import naming
from lcx.runs.layout import CHECKPOINTS, QUARANTINE

log = logging.getLogger(__name__)
ITEMS = ("params", "optimizer", "meta")  # params alone restore for evaluation and fine-tuning


class CheckpointMismatch(ConfigError):
  """A checkpoint holds parameters of another shape or structure than the config describes."""


class SaveFailed(RuntimeError):
  """A checkpoint could not be written."""


def _as_uint32(x):
  if x.dtype.itemsize == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  return x.astype(jnp.uint32)


@jax.jit
def _fingerprints(tree):
  """One uint32 per array: the sum of its bit patterns times odd position weights, mod 2^32.

  Integer sums wrap the same in any order, so the value does not depend on the sharding or the
  number of processes; odd weights make any single changed element change the sum.
  """
  def one(x):
    bits = _as_uint32(x)
    weights = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape) * 2 + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)
  return jax.tree.map(one, tree)


def fingerprints(tree) -> dict[str, int]:
  """{key path: checksum} of every array of a state (checkpoint integrity)."""
  values = jax.device_get(_fingerprints(tree))
  return {path_name(path): int(v) for path, v in jax.tree_util.tree_flatten_with_path(values)[0]}


def path_name(path) -> str:
  """A key path as a parameter name: blocks/0/attn/wq."""
  parts = []
  for key in path:
    part = getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
    parts.append(str(part))
  if parts and parts[-1] == "value":  # an nnx Variable's payload
    parts.pop()
  return "/".join(parts)


def flat_arrays(tree) -> dict:
  """{key path ('blocks/0/attn/wq'): leaf} of a state, in the tree's own order."""
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shapes(tree) -> dict[str, tuple]:
  return {path_name(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def describe_mismatch(saved: dict, wanted: dict, limit: int = 3) -> list[str]:
  """What differs between two {parameter: (shape, dtype)} tables, one phrase each."""
  out = []
  for name in sorted(saved.keys() | wanted.keys()):
    if name not in wanted:
      out.append(f"{name} is in the checkpoint but not in this model")
    elif name not in saved:
      out.append(f"{name} is not in the checkpoint")
    elif saved[name] != wanted[name]:
      out.append(f"{name} is {saved[name][0]} {saved[name][1]} in the checkpoint, "
                 f"{wanted[name][0]} {wanted[name][1]} here")
  if len(out) > limit:
    out = out[:limit] + [f"and {len(out) - limit} more differences"]
  return out


class Checkpointer:
  """The checkpoints of one run. read_only: never writes, moves or deletes anything."""

  def __init__(self, workdir: pathlib.Path, keep: int = 3, read_only: bool = False):
    self.directory = (workdir / CHECKPOINTS).resolve()
    self.quarantine = workdir.resolve() / QUARANTINE
    self.keep, self.read_only = keep, read_only
    self._pending = None  # the step of a save that may still be running
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    if self.read_only:  # the options orbax would otherwise change with a warning
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, save_interval_steps=0, max_to_keep=None,
          cleanup_tmp_directories=False, enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                             enable_async_checkpointing=True)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # a read-only manager warns that its directory is read-only
    try:
      return ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
    finally:
      absl.setLevel(level)

  def save(self, step: int, state: dict, meta: dict) -> None:
    """Starts an asynchronous save; the train loop goes on while it is written. The meta records
    a checksum of every array, checked on restore. The previous save is finished first (orbax
    would wait for it too), so that its failure is reported as its own."""
    self.raise_if_failed(wait=True)
    meta = {**meta, "fingerprints": fingerprints(state)}
    items = {"params": ocp.args.StandardSave(state["params"]), "meta": ocp.args.JsonSave(meta)}
    optimizer = {k: v for k, v in state.items() if k != "params"}
    if optimizer:  # a state of parameters alone (an imported model) has no optimizer item
      items["optimizer"] = ocp.args.StandardSave(optimizer)
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # orbax raises OSError, ValueError, ... from the file system
      raise self._failure(step, e) from None
    self._pending = step

  def raise_if_failed(self, wait: bool = False) -> None:
    """SaveFailed if the last save has finished without producing its checkpoint."""
    if self._pending is None or (not wait and self.manager.is_saving_in_progress()):
      return
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._failure(step, e) from None
    # Orbax's primary process may log a failed commit and go on; the folder tells. (Other
    # processes may return before the primary has renamed it into place.)
    if jax.process_index() == 0 and not (self.directory / str(step)).is_dir():
      raise self._failure(step, "orbax did not commit it")

  def _failure(self, step: int, error) -> SaveFailed:
    reason = error if isinstance(error, str) else _os_reason(error)
    kept = sorted(int(s.name) for s in self.directory.glob("*") if s.name.isdigit())
    return SaveFailed(f"saving checkpoint {step} to {self.directory} failed ({reason}); stopped "
                      f"here, earlier checkpoints kept: {', '.join(map(str, kept)) or 'none'}")

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def set_aside(self) -> list[str]:
    """Names of the checkpoints moved to the quarantine folder by earlier starts."""
    return sorted(p.name for p in self.quarantine.glob("*")) if self.quarantine.is_dir() else []

  def check_fits(self, step: int, abstract_state: dict, params_only: bool) -> None:
    """CheckpointMismatch when the saved arrays' shapes or structure differ from the target.
    Metadata that cannot be read counts as damage and is left to the restore."""
    items = ("params",) if params_only else ("params", "optimizer")
    if not params_only and not (self.directory / str(step) / "optimizer").exists() and (
        self.directory / str(step) / "params").exists():
      raise CheckpointMismatch(
          f"checkpoint {self.directory}/{step} holds parameters only (an imported model has no "
          "optimizer state): train from it in a new workdir with --config.init_from="
          f"{self.directory.parent}")
    handler = ocp.StandardCheckpointHandler()
    problems = []
    for item in items:
      try:
        saved = _shapes(handler.metadata(self.directory / str(step) / item))
      except Exception:  # unreadable: damaged, which the restore will report
        return
      target = abstract_state["params"] if item == "params" else {
          k: v for k, v in abstract_state.items() if k != "params"}
      problems += describe_mismatch(saved, _shapes(target))
    if problems:
      raise CheckpointMismatch(
          f"checkpoint {self.directory}/{step} does not fit this config: {'; '.join(problems)}")

  def restore_latest(self, abstract_state: dict, params_only: bool = False):
    """(state, meta) of the newest checkpoint that restores intact, or None when there is none.

    With params_only, abstract_state holds just "params" and nothing else is read (evaluation,
    and fine-tunes that start a fresh optimizer).
    """
    for step in reversed(self.steps()):
      self.check_fits(step, abstract_state, params_only)
      items = {"params": ocp.args.StandardRestore(abstract_state["params"]),
               "meta": ocp.args.JsonRestore()}
      if not params_only:
        items["optimizer"] = ocp.args.StandardRestore(
            {k: v for k, v in abstract_state.items() if k != "params"})
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # orbax raises many types for damaged files
        self._damaged(step, _os_reason(e))
        continue
      state = {"params": restored.params}
      if not params_only:
        state.update(restored.optimizer)
      changed = _changed_arrays(state, restored.meta.get("fingerprints"))
      if changed:
        self._damaged(step, f"{len(changed)} arrays differ from the checksums saved with it, "
                            f"e.g. {changed[0]}")
        continue
      return state, {k: v for k, v in restored.meta.items() if k != "fingerprints"}
    return None

  def _damaged(self, step: int, reason: str) -> None:
    if self.read_only:
      log.error("checkpoint %s/%d is damaged (%s); skipping it (a training run on this workdir "
                "sets it aside)", self.directory, step, reason)
      return
    self.manager.close()
    self.quarantine.mkdir(parents=True, exist_ok=True)
    target = self.quarantine / f"{step}"
    suffix = 0
    while target.exists():
      suffix += 1
      target = self.quarantine / f"{step}.{suffix}"
    shutil.move(str(self.directory / str(step)), str(target))
    log.error("checkpoint %s/%d does not restore (%s); moved it to %s and trying the previous "
              "one", self.directory, step, reason, target)
    self.manager = self._open()

  def close(self) -> None:
    """Waits for the last save; SaveFailed if it failed."""
    try:
      self.raise_if_failed(wait=True)
    finally:
      with naming(self.directory):
        self.manager.close()


_OS_ERRORS = ("No space left on device", "Disk quota exceeded", "Permission denied",
              "Read-only file system", "Input/output error")


def _os_reason(error: Exception) -> str:
  """The file system's own words when orbax or tensorstore wrap them in a long message."""
  text = str(error)
  for phrase in _OS_ERRORS:
    if phrase in text:
      return phrase.lower()
  first = text.splitlines()[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(error).__name__}: {first[:300]}"


def _changed_arrays(state: dict, saved: dict | None) -> list[str]:
  """Key paths whose checksum differs from the saved one (none saved: nothing to check)."""
  if not saved:
    return []
  return [path for path, value in fingerprints(state).items()
          if path in saved and saved[path] != value]
