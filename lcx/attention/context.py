"""Attention over a sequence sharded on the mesh's `context` axis (context parallelism).

Each device holds two chunks of every sequence in the load-balanced order (lcx.sharding: device d
holds chunks d and 2C-1-d of 2C). Inside a shard_map manual over `context` only (batch and heads
stay sharded as the rules say), each device runs the layer's kernel once per chunk: the chunk's
queries at their offset (`q_offset`, traced: shard_map runs one program on every device) into
the keys of the sequence, which the kernel gathers from every device with their positions,
document ids and the keys' half of a row bias, in natural order (`keys_from`: inside its custom
VJP, so that between the forward and backward passes it keeps only this device's keys).
Positions are global and explicit, so every position scheme's bias is the same function of them
as on one device, and document ids keep packed documents apart across chunk boundaries. Under
the causal mask the early chunk meets few key tiles and the late one many; their sum is the same
on every device.

The gathers' transposes (reduce-scatters) carry dK and dV back to the devices that hold the keys;
a learned bias's parameters, closed over, get their gradient summed over the devices.

`exchange="ring"` runs lcx.attention.ring instead: keys passed device to device, two devices'
worth held at a time instead of the whole sequence's (blockwise's tiles, whatever `attend` is).
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lcx import sharding
from lcx.attention.tiles import DEFAULT_BLOCK
from lcx.sharding import CONTEXT

EXCHANGES = ("gather", "ring")  # config.mesh.context_exchange


def attend_over_context(attend, q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                        q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None,
                        row_bias=None, causal=True, exchange: str = "gather",
                        block: int = DEFAULT_BLOCK, **local):
  """attend(...) of a sequence sharded over the active mesh's context axis, queries and keys the
  same tokens in the load-balanced order; `attend` must take `q_offset` (a kernel record's
  takes_offset). The result is in the same order, sharded alike. `exchange`: how the keys reach
  the queries (EXCHANGES); `block`: the ring's tile length."""
  if not causal:
    raise ValueError("context parallelism splits the work of a causal mask; it needs causal")
  if exchange not in EXCHANGES:
    raise ValueError(f"context exchange {exchange!r} is not one of {', '.join(EXCHANGES)}")
  mesh, _ = sharding.active()
  C = int(mesh.shape[CONTEXT])
  by_length = P(None, CONTEXT)  # (B, L, ...): the sequence axis is the context axis's
  inputs = dict(q=q_BQHK, k=k_BKHK, v=v_BKHK, q_pos=q_positions_BQ, k_pos=k_positions_BK,
                q_seg=q_segment_ids_BQ, k_seg=k_segment_ids_BK)
  specs = {name: by_length for name in inputs}
  if row_bias is not None:  # (B, H, L) each
    inputs.update(a=row_bias[0], b=row_bias[1])
    specs.update(a=P(None, None, CONTEXT), b=P(None, None, CONTEXT))
  inputs = {name: x for name, x in inputs.items() if x is not None}
  specs = {name: specs[name] for name in inputs}

  def ring(x):
    from lcx.attention.ring import ring_attention  # a kernel: loaded where it runs
    return ring_attention(
        x["q"], x["k"], x["v"], q_positions_BQ=x["q_pos"], k_positions_BK=x["k_pos"],
        q_segment_ids_BQ=x.get("q_seg"), k_segment_ids_BK=x.get("k_seg"), bias_fn=bias_fn,
        row_bias=(x["a"], x["b"]) if "a" in x else None, block=block, **local)

  def per_device(x):
    c = x["q"].shape[1] // 2

    def gather(array, axis, whole):
      """The first half of the sequence (whole=False) or all of it, natural order, from every
      device's part: their early chunks, gathered, are chunks 0..C-1 in order; their late ones,
      C..2C-1 in reverse."""
      early, late = (jax.lax.all_gather(h, CONTEXT, axis=axis, tiled=True)
                     for h in jnp.split(array, 2, axis=axis))
      if not whole:
        return early
      late = jnp.flip(late.reshape(*late.shape[:axis], C, c, *late.shape[axis + 1:]), axis=axis)
      return jnp.concatenate([early, late.reshape(early.shape)], axis=axis)

    def keys_from(whole):
      def made(k, v, k_pos, k_seg, b):
        return (gather(k, 1, whole), gather(v, 1, whole), gather(k_pos, 1, whole),
                None if k_seg is None else gather(k_seg, 1, whole),
                None if b is None else gather(b, 2, whole))
      return made

    device = jax.lax.axis_index(CONTEXT)
    outputs = []
    # The early chunk (d < C) meets only keys of the first half; the late one, keys of both. The
    # kernel gathers them itself (keys_from), so that it keeps only this device's for its
    # backward pass and gathers them again there.
    for half, chunk in enumerate((device, 2 * C - 1 - device)):
      rows = slice(half * c, (half + 1) * c)
      extra = {} if "b" not in x else dict(row_bias=(x["a"][:, :, rows], x["b"]))
      outputs.append(attend(
          x["q"][:, rows], x["k"], x["v"], q_positions_BQ=x["q_pos"][:, rows],
          k_positions_BK=x["k_pos"], q_segment_ids_BQ=x["q_seg"][:, rows] if "q_seg" in x else None,
          k_segment_ids_BK=x.get("k_seg"), bias_fn=bias_fn, q_offset=chunk * c,
          keys_from=keys_from(whole=bool(half)), **extra, **local))
    return jnp.concatenate(outputs, axis=1)

  # check_vma=False: the kernels' loops start from constants, which the varying-axes check would
  # have marked per device; the transpose then sums the gradient of what the body closes over
  # (a bias's parameters) over the devices, as a replicated input's must be.
  sharded = jax.shard_map(ring if exchange == "ring" else per_device, mesh=mesh,
                          in_specs=(specs,), out_specs=by_length,
                          axis_names={CONTEXT}, check_vma=False)
  return sharded(inputs)
