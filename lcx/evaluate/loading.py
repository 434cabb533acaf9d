"""Load a trained run for evaluation: its saved config (plus overrides) and latest parameters."""
import dataclasses
import json
import pathlib

import jax
import ml_collections
from flax import nnx

from lcx import config as config_lib
from lcx import overrides as overrides_lib
from lcx.checkpoint import Checkpointer
from lcx.sharding import make_mesh
from lcx.train_step import abstract_model, param_shardings


@dataclasses.dataclass
class LoadedRun:
  workdir: pathlib.Path
  config: ml_collections.ConfigDict  # resolved, overrides applied
  model: nnx.Module
  mesh: jax.sharding.Mesh
  step: int
  meta: dict


def saved_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"{workdir} is not an lcx run: it has no config.json")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_params(workdir, config, mesh):
  """(graphdef, params, meta) from the latest good checkpoint of the run in workdir."""
  graphdef, abstract = abstract_model(config_lib.model_config(config))
  shardings = param_shardings(abstract, mesh, tuple(map(tuple, config.mesh.rules)))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  checkpointer = Checkpointer(pathlib.Path(workdir), keep=10 ** 6)
  try:
    restored = checkpointer.restore_latest({"params": target}, params_only=True)
  finally:
    checkpointer.close()
  if restored is None:
    raise ValueError(f"{workdir}/checkpoints holds no checkpoint that restores")
  state, meta = restored
  return graphdef, state["params"], meta


def load_run(workdir, overrides: list[str] = ()) -> LoadedRun:
  """The run's model at its latest checkpoint, with `--config.a.b=v` overrides applied on top
  (for example a RoPE scaling method, zero-shot). The mesh defaults to all devices as data."""
  workdir = pathlib.Path(workdir).expanduser()
  config = saved_config(workdir)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  try:
    config = config_lib.resolve(overrides_lib.apply(config, list(overrides)), jax.device_count())
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  mesh = make_mesh(config.mesh)
  graphdef, params, meta = restore_params(workdir, config, mesh)
  return LoadedRun(workdir, config, nnx.merge(graphdef, params), mesh, int(meta["step"]), meta)
