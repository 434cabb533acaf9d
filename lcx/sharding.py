"""Mesh from config, logical-axis rules, and the one `shard(x, names)` helper.

Parameters and activations name their axes logically ("embed", "heads", "batch", "length", ...).
A small rule table (config.mesh.rules) maps those names to mesh axes; nothing else decides layout.

A sequence sharded over the `context` axis (context parallelism) is held in load-balanced order:
cut into 2C chunks for C devices, device d holds chunk d and chunk 2C-1-d, so that under a
causal mask every device has the same work (an early chunk sees few keys, a late one many).
`to_context_order` / `from_context_order` move a sequence axis between that order and the
natural one; with C = 1 both are the identity.
"""
import contextlib
import contextvars
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# context before tensor: tensor parallelism, whose collectives are the most frequent, keeps the
# nearest devices
MESH_AXES = ("data", "fsdp", "context", "tensor")
CONTEXT = "context"
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "lcx_sharding", default=None)


def resolve_mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes for (data, fsdp, context, tensor); one -1 takes the devices the others leave. A
  missing context is 1 (meshes written before context parallelism)."""
  shape = [int(sizes.get(a, 1) if a == CONTEXT else sizes[a]) for a in MESH_AXES]
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
    raise ValueError(f"config.mesh: data*fsdp*context*tensor = {int(np.prod(shape))} but there "
                     f"are {num_devices} devices; make the product {num_devices} or set one axis "
                     "to -1")
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


def context_size() -> int:
  """How many devices the enclosing activation_sharding's mesh shards a sequence over (1 outside
  one, or without a context axis)."""
  active = _ACTIVE.get()
  return int(active[0].shape.get(CONTEXT, 1)) if active else 1


def context_chunks(context: int) -> np.ndarray:
  """The natural chunk index at each place of the load-balanced order: device d holds chunks d
  and 2C-1-d, in that order (C=2: 0, 3, 1, 2)."""
  return np.stack([np.arange(context), 2 * context - 1 - np.arange(context)], axis=1).reshape(-1)


def to_context_order(x, context: int, axis: int = 1):
  """x (numpy or JAX) with its sequence axis `axis` put in the load-balanced order of `context`
  devices; the length must be a multiple of 2 * context."""
  return _reorder(x, context, axis, context_chunks(context))


def from_context_order(x, context: int, axis: int = 1):
  """The inverse of to_context_order: the sequence axis back in natural order."""
  return _reorder(x, context, axis, np.argsort(context_chunks(context)))


def _reorder(x, context, axis, chunks):
  if context == 1:
    return x
  axis = axis % x.ndim
  length = x.shape[axis]
  if length % (2 * context):
    raise ValueError(f"a sequence of {length} tokens cannot be split into 2 x {context} equal "
                     f"chunks for mesh.context={context}; use a length that is a multiple of "
                     f"{2 * context}")
  xp = np if isinstance(x, np.ndarray) else jnp
  split = x.reshape(*x.shape[:axis], 2 * context, length // (2 * context), *x.shape[axis + 1:])
  return xp.take(split, chunks, axis=axis).reshape(x.shape)


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
