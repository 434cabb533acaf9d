"""Orbax checkpoints of the train state plus a small JSON of counters; resume from the latest good.

A checkpoint that fails to restore (corrupt or half-written) is reported, moved aside to
workdir/corrupt_checkpoints/ (nothing is deleted) and the previous one is tried.
"""
import logging
import pathlib
import shutil

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
ITEMS = ("params", "optimizer", "meta")  # params alone restore for evaluation and fine-tuning


class Checkpointer:

  def __init__(self, workdir: pathlib.Path, keep: int):
    self.directory = (workdir / "checkpoints").resolve()
    self.quarantine = workdir.resolve() / "corrupt_checkpoints"
    self.keep = keep
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

  def save(self, step: int, state: dict, meta: dict) -> None:
    """Starts an asynchronous save; the train loop goes on while it is written."""
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        optimizer=ocp.args.StandardSave({k: v for k, v in state.items() if k != "params"}),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, abstract_state: dict, params_only: bool = False):
    """(state, meta) of the newest checkpoint that restores, or None when there is none.

    With params_only, abstract_state holds just "params" and nothing else is read (evaluation,
    and fine-tunes that start a fresh optimizer).
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      items = {"params": ocp.args.StandardRestore(abstract_state["params"]),
               "meta": ocp.args.JsonRestore()}
      if not params_only:
        items["optimizer"] = ocp.args.StandardRestore(
            {k: v for k, v in abstract_state.items() if k != "params"})
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # orbax raises many types for damaged files
        self._set_aside(step, e)
        continue
      state = {"params": restored.params}
      if not params_only:
        state.update(restored.optimizer)
      return state, restored.meta
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
