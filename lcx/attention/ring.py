"""The ring variant of attention over a sequence sharded on the mesh's `context` axis.

The gather variant (lcx.attention.context) has every device hold the keys of the whole sequence
while a layer attends; the ring holds two devices' worth at a time. Each device keeps its
queries and passes its keys (with their values, positions, documents and a row bias's key half)
one device along the ring per step (`ppermute`), C steps for C devices. At each step a device's
two query chunks meet the visiting device's two key chunks through blockwise attention's tiles,
at the chunk pair's offset (the same relative offset `q_offset` is: a pair wholly above the
causal diagonal visits no tile, one wholly below it every tile), and the partial outputs merge
by their log-normalizers. The keys bound for the next step are sent before this step's tiles
run, so the transfer can overlap them.

The backward pass goes round the ring again with the final output and log-normalizer (a tile's
probabilities exp(s - lse) are then its exact share): dQ and the row bias's query-half gradient
stay home, dK and dV (and the key-half gradient) travel with their keys and arrive home after the
last step. Only a device's own keys are kept between the passes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lcx.attention import blockwise
from lcx.attention.tiles import DEFAULT_BLOCK, hoisted_bias
from lcx.sharding import CONTEXT

# (query half, key half) of the chunk pairs that may meet: a device's early chunk (d < C) never
# sees a late one (>= C), whichever device holds it.
PAIRS = ((0, 0), (1, 0), (1, 1))


def ring_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                   q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, row_bias=None,
                   window: int = 0, chunk: int = 0, block: int = DEFAULT_BLOCK):
  """One device's part, inside a shard_map manual over `context`: causal attention of its two
  chunks (the load-balanced order's, queries and keys the same tokens) over the whole sequence,
  in the same order. `block`: the tile length."""
  B, L, H, _ = q_BQHK.shape
  c = L // 2
  bias, bias_args = hoisted_bias(bias_fn, q_positions_BQ[:, :min(block, c)],
                                 jnp.zeros((B, min(block, c)), q_positions_BQ.dtype))
  g = blockwise.geometry(B, H, k_BKHK.shape[2], c, c, bias=bias, causal=True, window=window,
                         chunk=chunk, dynamic=True, block_q=block, block_k=block)
  a, b = (None, None) if row_bias is None else row_bias
  queries = tuple(blockwise.queries_laid_out(g, *half) for half in zip(
      *(_halves(x, axis) for x, axis in ((q_BQHK, 1), (q_positions_BQ, 1),
                                         (q_segment_ids_BQ, 1), (a, 2)))))
  keys = tuple(blockwise.keys_laid_out(g, *half) for half in zip(
      *(_halves(x, axis) for x, axis in ((k_BKHK, 1), (v_BKHK, 1), (k_positions_BK, 1),
                                         (k_segment_ids_BK, 1), (b, 2)))))
  devices = jax.lax.axis_size(CONTEXT)
  outputs = _ring(g, devices, queries, keys, bias_args)
  return jnp.concatenate([blockwise.laid_back(g, o) for o in outputs], axis=1)


def _halves(x, axis):
  return (None, None) if x is None else tuple(jnp.split(x, 2, axis=axis))


def _offsets(C: int, c: int, step):
  """Each pair's causal offset at ring step `step`: this device d holds chunks d and 2C-1-d, and
  meets the keys of device d - step (mod C); query i of chunk m sees key j of chunk n where
  j <= i + (m - n) c."""
  d = jax.lax.axis_index(CONTEXT)
  source = (d - step) % C
  query_chunks, key_chunks = (d, 2 * C - 1 - d), (source, 2 * C - 1 - source)
  return [(query_chunks[i] - key_chunks[j]) * c for i, j in PAIRS]


def _pass_on(tree, C: int):
  """Every array of `tree` sent one device along the ring (device d's to d + 1)."""
  ring = [(d, (d + 1) % C) for d in range(C)]
  return jax.tree.map(lambda x: jax.lax.ppermute(x, CONTEXT, ring), tree)


def _around(C: int, step, state, keys, travelling):
  """C steps of step(s, keys, travelling, state) -> (travelling, state), the keys and what travels
  with them passed on after each (the keys only while another step needs them): the state and
  what travels with the keys at the end (back home only where it was passed on after the last)."""
  def body(s, carry):
    keys, travelling, state = carry
    arriving = _pass_on(keys, C)  # sent before the step's tiles, which it need not wait for
    travelling, state = step(s, keys, travelling, state)
    return arriving, _pass_on(travelling, C), state

  keys, travelling, state = jax.lax.fori_loop(0, C - 1, body, (keys, travelling, state))
  travelling, state = step(C - 1, keys, travelling, state)
  return _pass_on(travelling, C), state


def _merge(o_acc, lse_acc, o, lse):
  """Two normalized partial outputs over disjoint keys, merged by their log-normalizers."""
  lse = jnp.where(jnp.isposinf(lse), -jnp.inf, lse)  # blockwise's rows that met no key
  total = jnp.logaddexp(lse_acc, lse)
  safe = jnp.where(jnp.isfinite(total), total, 0.0)
  weight = lambda x: jnp.exp(x - safe)[..., None]
  return o_acc * weight(lse_acc) + o.astype(jnp.float32) * weight(lse), total


def _row_bias(query, key):
  return None if query[3] is None else (query[3], key[4])


def _ring_forward(g, C, queries, keys, bias_args):
  def step(s, keys, travelling, state):
    state = list(state)
    for (i, j), offset in zip(PAIRS, _offsets(C, g.queries, s)):
      q, q_pos, q_seg, _ = queries[i]
      k, v, k_pos, k_seg, _ = keys[j]
      o, lse = blockwise.forward(g.at_offset(offset), q, k, v, q_pos, k_pos, q_seg, k_seg,
                                 bias_args, _row_bias(queries[i], keys[j]))
      state[i] = _merge(*state[i], o, lse)
    return travelling, tuple(state)

  start = tuple((jnp.zeros(q.shape, jnp.float32), jnp.full(q.shape[:2], -jnp.inf, jnp.float32))
                for q, *_ in queries)
  _, state = _around(C, step, start, keys, ())
  outputs = tuple(o.astype(q[0].dtype) for (o, _), q in zip(state, queries))
  # a row that met no key (padding) has lse +inf, as blockwise's backward pass reads it
  lses = tuple(jnp.where(jnp.isfinite(lse), lse, jnp.inf) for _, lse in state)
  return outputs, lses


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ring(g, C, queries, keys, bias_args):
  return _ring_forward(g, C, queries, keys, bias_args)[0]


def _ring_fwd(g, C, queries, keys, bias_args):
  outputs, lses = _ring_forward(g, C, queries, keys, bias_args)
  return outputs, (queries, keys, bias_args, outputs, lses)


def _ring_bwd(g, C, residuals, d_outputs):
  queries, keys, bias_args, outputs, lses = residuals
  zeros = lambda x: None if x is None else jnp.zeros(x.shape, jnp.float32)
  add = lambda total, x: None if x is None else total + x.astype(jnp.float32)

  def step(s, keys, travelling, state):
    travelling, (d_queries, d_params) = list(map(list, travelling)), state
    d_queries = list(map(list, d_queries))
    for (i, j), offset in zip(PAIRS, _offsets(C, g.queries, s)):
      q, q_pos, q_seg, _ = queries[i]
      k, v, k_pos, k_seg, _ = keys[j]
      grads = blockwise.gradients(g, q, k, v, outputs[i], lses[i], q_pos, k_pos, q_seg, k_seg,
                                  bias_args, _row_bias(queries[i], keys[j]), offset,
                                  d_outputs[i])
      d_rows = grads[8] or (None, None)
      dq, da = d_queries[i]
      d_queries[i] = [add(dq, grads[0]), add(da, d_rows[0])]
      dk, dv, db = travelling[j]
      travelling[j] = [add(dk, grads[1]), add(dv, grads[2]), add(db, d_rows[1])]
      d_params = jax.tree.map(jnp.add, d_params, grads[7][1])
    return (tuple(map(tuple, travelling)),
            (tuple(map(tuple, d_queries)), d_params))

  d_queries = tuple((zeros(q), zeros(a)) for q, _, _, a in queries)
  d_keys = tuple((zeros(k), zeros(v), zeros(b)) for k, v, _, _, b in keys)
  d_params = jax.tree.map(jnp.zeros_like, bias_args[1])
  d_keys, (d_queries, d_params) = _around(C, step, (d_queries, d_params), keys, d_keys)
  no_grad = lambda x: None if x is None else np.zeros(x.shape, jax.dtypes.float0)
  cast = lambda d, x: None if d is None else d.astype(x.dtype)
  return (tuple((cast(dq, q), no_grad(q_pos), no_grad(q_seg), cast(da, a))
                for (dq, da), (q, q_pos, q_seg, a) in zip(d_queries, queries)),
          tuple((cast(dk, k), cast(dv, v), no_grad(k_pos), no_grad(k_seg), cast(db, b))
                for (dk, dv, db), (k, v, k_pos, k_seg, b) in zip(d_keys, keys)),
          (tuple(map(no_grad, bias_args[0])), d_params))


_ring.defvjp(_ring_fwd, _ring_bwd)
