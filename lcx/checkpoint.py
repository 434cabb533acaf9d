"""Orbax checkpoints of the train state plus a small JSON of counters; resume from the latest good.

A checkpoint that fails to restore (corrupt or half-written) is reported, moved aside to
workdir/corrupt_checkpoints/ (nothing is deleted) and the previous one is tried.
"""
import logging
import pathlib
import shutil

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:

  def __init__(self, workdir: pathlib.Path, keep: int):
    self.directory = (workdir / "checkpoints").resolve()
    self.quarantine = workdir.resolve() / "corrupt_checkpoints"
    self.keep = keep
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

  def save(self, step: int, state, meta: dict) -> None:
    """Starts an asynchronous save; the train loop goes on while it is written."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, abstract_state):
    """(state, meta) of the newest checkpoint that restores, or None when there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta
      except Exception as e:  # orbax raises many types for damaged files
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    self.manager.close()
    self.quarantine.mkdir(parents=True, exist_ok=True)
    target = self.quarantine / f"{step}"
    suffix = 0
    while target.exists():
      suffix += 1
      target = self.quarantine / f"{step}.{suffix}"
    shutil.move(str(self.directory / str(step)), str(target))
    log.error("checkpoint %s/%d does not restore (%s: %s); moved it to %s and trying the previous "
              "one", self.directory, step, type(error).__name__, str(error).splitlines()[0][:200],
              target)
    self.manager = self._open()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
