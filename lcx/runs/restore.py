"""A run directory as other stages see it: its saved config and its latest parameters."""
import json
import pathlib

import jax
import ml_collections

from lcx import config as config_lib
from lcx.runs.checkpoint import Checkpointer, CheckpointMismatch, flat_arrays, path_name
from lcx.runs.layout import CONFIG
from lcx.model.transformer import abstract_model
from lcx.sharding import param_shardings


def saved_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir).expanduser() / CONFIG
  if not path.exists():
    raise config_lib.ConfigError(f"{workdir} is not an lcx run: it has no {CONFIG}")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise config_lib.ConfigError(f"{path} is not valid JSON ({e})") from None


def restore_state(workdir, abstract_state: dict) -> tuple[dict, dict]:
  """(the whole train state, meta) from the run's latest good checkpoint: a fine-tune that
  continues the optimizer. Its optimizer settings must match the run's."""
  checkpointer = Checkpointer(pathlib.Path(workdir).expanduser(), read_only=True)
  try:
    restored = checkpointer.restore_latest(abstract_state)
  except CheckpointMismatch as e:
    raise CheckpointMismatch(f"{e} (init_optimizer needs the optimizer settings of the run, "
                             "train.grad_clip included)") from None
  finally:
    checkpointer.close()
  if restored is None:
    raise config_lib.ConfigError(f"{workdir}/checkpoints holds no checkpoint that restores")
  return restored


def restore_params(workdir, config: ml_collections.ConfigDict, mesh):
  """(graphdef, params laid out on mesh, checkpoint meta) from the run's latest good checkpoint,
  for the model that the resolved `config` describes."""
  graphdef, abstract = abstract_model(config_lib.model_config(config))
  shardings = param_shardings(abstract, mesh, tuple(map(tuple, config.mesh.rules)))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  checkpointer = Checkpointer(pathlib.Path(workdir).expanduser(), read_only=True)
  try:
    restored = checkpointer.restore_latest({"params": target}, params_only=True)
  finally:
    checkpointer.close()
  if restored is None:
    raise config_lib.ConfigError(f"{workdir}/checkpoints holds no checkpoint that restores")
  state, meta = restored
  return graphdef, state["params"], meta


def restore_params_changed(workdir, config: ml_collections.ConfigDict, fresh_params, mesh):
  """(params, meta, report) for a fine-tune whose model differs from the source run's
  (config.finetune_changes): the source's parameters restored as its own model has them, then
  every one the new model has at the same path and shape taken over, the new model's others left
  as `fresh_params` initialized them. `report` names the parameters kept fresh and those of the
  source left out (a dropped scheme's own)."""
  source = config_lib.fill_missing(saved_config(workdir))
  source_config = ml_collections.ConfigDict(config.to_dict())
  source_config.model = source.model
  _, source_params, meta = restore_params(workdir, source_config, mesh)
  by_path = flat_arrays(source_params)
  fresh, taken = [], set()

  def take(path, leaf):
    key = path_name(path)
    old = by_path.get(key)
    if old is None:
      fresh.append(key)
      return leaf
    if old.shape != leaf.shape:
      raise config_lib.ConfigError(
          f"config.finetune_changes: the parameter {key} is {old.shape} in {workdir} and "
          f"{leaf.shape} in this model; a fine-tune may add or drop parameters, not reshape them")
    taken.add(key)
    return old.astype(leaf.dtype)

  params = jax.tree_util.tree_map_with_path(take, fresh_params)
  return params, meta, {"fresh": fresh, "dropped": sorted(set(by_path) - taken)}
