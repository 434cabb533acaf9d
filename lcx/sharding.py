"""Mesh from config, logical-axis rules, and the one `shard(x, names)` helper.

Parameters and activations name their axes logically ("embed", "heads", "batch", ...). A small
rule table (config.mesh.rules) maps those names to mesh axes; nothing else decides layout.
"""
import contextlib
import contextvars
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "lcx_sharding", default=None)


def resolve_mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes for (data, fsdp, tensor); one -1 takes the devices the others leave."""
  shape = [int(sizes[a]) for a in MESH_AXES]
  free = [i for i, s in enumerate(shape) if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh: sizes {dict(zip(MESH_AXES, shape))} are invalid; each must be "
                     "a positive int, and at most one may be -1 (the remaining devices)")
  fixed = int(np.prod([s for s in shape if s != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {dict(zip(MESH_AXES, shape))} cannot fill {num_devices} "
                       f"devices; the fixed sizes' product ({fixed}) must divide {num_devices}")
    shape[free[0]] = num_devices // fixed
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"config.mesh: data*fsdp*tensor = {int(np.prod(shape))} but there are "
                     f"{num_devices} devices; make the product {num_devices} or set one axis to -1")
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(sizes, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_to_spec(names: Sequence[str | None], rules: Rules) -> P:
  """PartitionSpec for logical axis names; unnamed or unruled axes are replicated."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in names:
    axes = table.get(name) if name is not None else None
    axes_tuple = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    # A mesh axis may shard only one dimension of an array; the first dimension wins.
    axes_tuple = tuple(a for a in axes_tuple if a not in used)
    used.update(axes_tuple)
    spec.append(None if not axes_tuple else axes_tuple[0] if len(axes_tuple) == 1 else axes_tuple)
  return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], rules: Rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, rules))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
  """Within this context `shard` constrains activations; outside it `shard` is the identity."""
  token = _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active() -> tuple[Mesh, Rules] | None:
  """The (mesh, rules) of the enclosing activation_sharding context, or None."""
  return _ACTIVE.get()


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  active = _ACTIVE.get()
  if active is None:
    return x
  return jax.lax.with_sharding_constraint(x, named_sharding(active[0], names, active[1]))


def param_shardings(abstract_params, mesh: Mesh, rules: Rules):
  """Each parameter's NamedSharding from its logical axis names (nnx Params carry them)."""
  def one(variable):
    names = variable.get_metadata().get("logical_axes") or (None,) * variable.value.ndim
    return variable.replace(value=named_sharding(mesh, names, rules))
  return jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))
