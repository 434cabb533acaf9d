"""Load a trained run for evaluation: its saved config (plus overrides) and latest parameters."""
import dataclasses
import pathlib

import jax
import ml_collections
from flax import nnx

from lcx import config as config_lib
from lcx import overrides as overrides_lib
from lcx.runs.checkpoint import CheckpointMismatch
from lcx.runs.restore import restore_params, saved_config
from lcx.sharding import make_mesh
from lcx.runs.workdir import config_changes


@dataclasses.dataclass
class LoadedRun:
  workdir: pathlib.Path
  config: ml_collections.ConfigDict  # resolved, overrides applied
  model: nnx.Module
  mesh: jax.sharding.Mesh
  step: int
  meta: dict


def load_run(workdir, overrides: list[str] = ()) -> LoadedRun:
  """The run's model at its latest checkpoint, with `--config.a.b=v` overrides applied on top
  (for example a RoPE scaling method, zero-shot). The mesh defaults to all devices as data,
  whatever mesh the run trained on; `--config.mesh.context=C` (with data) shards the scored
  windows over C devices (docs/context.md)."""
  workdir = pathlib.Path(workdir).expanduser()
  saved = config_lib.fill_missing(saved_config(workdir))
  config = ml_collections.ConfigDict(saved.to_dict())
  config.mesh.update(data=-1, fsdp=1, context=1, tensor=1)
  try:
    config = config_lib.resolve(overrides_lib.apply(config, list(overrides)), jax.device_count())
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  mesh = make_mesh(config.mesh)
  try:
    graphdef, params, meta = restore_params(workdir, config, mesh)
  except CheckpointMismatch as e:
    changed, _ = config_changes(saved.to_dict(), config.to_dict())
    model = [c for c in changed if c.startswith("model.")]
    cause = f"the overrides change {'; '.join(model)}, so " if model else ""
    raise CheckpointMismatch(f"{cause}{e}") from None
  return LoadedRun(workdir, config, nnx.merge(graphdef, params), mesh, int(meta["step"]), meta)
