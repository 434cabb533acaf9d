"""Blockwise (flash-style) attention in plain JAX: memory linear in length, forward and backward.

Queries and keys are cut into tiles; each query tile keeps a running max, normalizer and output
(online softmax) while it meets the key tiles it can see. Tiles wholly above the causal diagonal
are never visited: the list of tiles is built from the shapes, so they cost nothing. The position
bias is computed per tile from the tile's positions (never a T x T array), and the backward pass
(a custom VJP) recomputes each tile's probabilities from the saved log-normalizer instead of
storing them. A bias with parameters (T5, FIRE, ...) gets its gradient through the same tiles.
A bias of two per-row vectors (row_bias: a_i - b_j, data-dependent) is read a tile's slice at a
time, and its gradients are the tiles' row sums and minus their column sums of d(score).

Layout inside: (B*H, L, K), so every tile product is one batched matmul with the batch leading;
a bias is added to the tile viewed as (B, H, bq, bk), in whatever shape the scheme makes it. Keys
and values may have G < H heads (grouped-query attention), laid out (B*G, L, K): the R = H / G
query heads of a group meet its keys in one product (query-head operands viewed as
(B*G, R, ...)), so keys and values are never repeated, and dK, dV sum over the group.
Queries come scaled by 1/sqrt(K) (once, not per tile), and a tile wholly below the causal diagonal
without padded keys or packed documents is not masked at all.

A traced `q_offset` (a device's chunk of queries against the gathered keys of a sequence sharded
over devices: lcx.attention.context) makes the tile loops' bounds traced: they run as
while-loops that still visit only the tiles some query sees, and every tile is masked. With
`keys_from` (the gather) the kernel makes the keys it meets itself, inside its custom VJP, in the
forward pass and again in the backward one: only the keys it was given (a device's own) are kept
in between, and the gather's transpose carries their gradients back.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lcx.attention.library import local_mask
from lcx.attention.tiles import (DEFAULT_BLOCK, Geometry, first_key_tile, first_query_tile,
                                hoisted_bias, key_tiles_seen, query_tiles_end, visible_tiles)

# Above this many tiles the loops run as XLA while-loops (compile time and code size constant in
# length); below it they are unrolled, which lets XLA fuse and schedule each tile freely.
UNROLL_MAX_TILES = 64


def blockwise_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                        q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True,
                        window: int = 0, chunk: int = 0, row_bias=None, q_offset=None,
                        keys_from=None, block_q: int = DEFAULT_BLOCK,
                        block_k: int = DEFAULT_BLOCK):
  """Same signature and result as lcx.attention.library.dense_attention (see there). A local
  layer (window, chunk) visits only the tiles within its span: cost and memory linear in
  length."""
  if (window or chunk) and not causal:
    raise ValueError("a local attention window or chunk needs causal attention")
  if q_offset is not None and not causal:
    raise ValueError("a query offset (q_offset) places queries for a causal mask; it needs causal")
  B, Q, H, _ = q_BQHK.shape
  keys_given = (k_BKHK, v_BKHK, k_positions_BK, k_segment_ids_BK,
                None if row_bias is None else row_bias[1])
  # the number of keys the queries meet (those keys_from makes)
  S = (jax.eval_shape(keys_from, *keys_given)[0] if keys_from else k_BKHK).shape[1]
  bias, bias_args = hoisted_bias(bias_fn, q_positions_BQ[:, :min(block_q, Q)],
                                 jnp.zeros((B, min(block_k, S)), q_positions_BQ.dtype))
  g = geometry(B, H, k_BKHK.shape[2], Q, S, bias=bias, causal=causal, window=window,
               chunk=chunk, dynamic=q_offset is not None, block_q=block_q, block_k=block_k)
  if keys_from:  # the kernel lays out the keys itself after making them (its custom VJP keeps
    # the keys given); otherwise they enter laid out
    g = g.replace(expand=lambda *keys: keys_laid_out(g, *keys_from(*keys)))
  q, q_pos, q_seg, a = queries_laid_out(g, q_BQHK, q_positions_BQ, q_segment_ids_BQ,
                                        None if row_bias is None else row_bias[0])
  k, v, k_pos, k_seg, b = keys_given if keys_from else keys_laid_out(g, *keys_given)
  q_offset = None if q_offset is None else jnp.asarray(q_offset, jnp.int32)
  o = _attention(g, q, k, v, q_pos, k_pos, q_seg, k_seg, bias_args,
                 None if row_bias is None else (a, b), q_offset)
  return laid_back(g, o)


def geometry(B, H, G, Q, S, *, bias, causal, window, chunk, dynamic, block_q, block_k):
  """The static description of a call of Q queries (B rows, H heads) against S keys (G heads);
  `dynamic`: the causal offset comes traced (q_offset), so every tile may be seen."""
  bq, bk = min(block_q, Q), min(block_k, S)
  nq, nk = -(-Q // bq), -(-S // bk)
  offset = S - Q if causal else None  # query q sees keys up to q + offset
  span = window or chunk  # no key at or past this distance is seen
  tiles = (tuple((i, j) for i in range(nq) for j in range(nk)) if dynamic
           else visible_tiles(nq, nk, bq, bk, offset, span))
  return Geometry(B=B, H=H, R=H // G, bq=bq, bk=bk, nq=nq, nk=nk, queries=Q, keys=S,
                  causal_offset=None if dynamic else offset, dynamic=dynamic, tiles=tiles,
                  bias=bias, window=window, chunk=chunk, span=span, expand=None)


def _heads_first(x, pad):
  """(B, L, H or G, K) -> (B*H or B*G, L + pad, K)."""
  x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
  return x.transpose(0, 2, 1, 3).reshape(x.shape[0] * x.shape[2], x.shape[1], x.shape[3])


def _row_vectors(x, pad):
  """(B, H, L) row bias vectors -> (B*H, L + pad), float32."""
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, 0), (0, pad)))
  return x.reshape(-1, x.shape[2])


def queries_laid_out(g, q_BQHK, q_pos, q_seg, a):
  """Queries (scaled by 1/sqrt(K)), their positions, documents and row bias vector (None: none)
  in the kernel's layout, padded to whole tiles."""
  pad = g.nq * g.bq - g.queries
  q_scaled = q_BQHK * jnp.asarray(1.0 / np.sqrt(q_BQHK.shape[3]), q_BQHK.dtype)  # fused
  # padded keys are masked by index, whatever their segment
  return (_heads_first(q_scaled, pad), jnp.pad(q_pos, ((0, 0), (0, pad))),
          None if q_seg is None else jnp.pad(q_seg.astype(jnp.int32), ((0, 0), (0, pad))),
          None if a is None else _row_vectors(a, pad))


def keys_laid_out(g, k, v, k_pos, k_seg, b):
  """The keys, values, their positions, documents and row bias vector in the kernel's layout."""
  pad = g.nk * g.bk - g.keys
  return (_heads_first(k, pad), _heads_first(v, pad), jnp.pad(k_pos, ((0, 0), (0, pad))),
          None if k_seg is None else jnp.pad(k_seg.astype(jnp.int32), ((0, 0), (0, pad))),
          None if b is None else _row_vectors(b, pad))


def laid_back(g, o):
  """The kernel's output (B*H, padded queries, K) as (B, Q, H, K)."""
  return o.reshape(g.B, g.H, g.nq * g.bq, -1)[:, :, :g.queries].transpose(0, 2, 1, 3)


def _einsum(g, equation, *operands, query_heads):
  """jnp.einsum (float32) of tiles whose leading axis runs over the query heads (B*H) or the
  key/value heads (B*G); `query_heads`: for each operand and then the result, whether it runs over
  the query heads. With R query heads per key/value head, those operands are viewed as
  (B*G, R, ...), so a group meets its keys in one product and a per-key result sums the group."""
  if g.R == 1:
    return jnp.einsum(equation, *operands, preferred_element_type=jnp.float32)
  inputs, output = equation.split("->")
  *grouped, grouped_out = query_heads
  spec = lambda s, by_query: "nr" + s[1:] if by_query else s
  views = [x.reshape(-1, g.R, *x.shape[1:]) if by_query else x
           for x, by_query in zip(operands, grouped)]
  y = jnp.einsum(",".join(map(spec, inputs.split(","), grouped)) + "->"
                 + spec(output, grouped_out), *views, preferred_element_type=jnp.float32)
  return y.reshape(-1, *y.shape[2:]) if grouped_out else y


def _per_head(g, x):
  """A (B*H, bq, bk) tile viewed as (B, H, bq, bk), and back."""
  return x.reshape(g.B, g.H, g.bq, g.bk) if x.ndim == 3 else x.reshape(-1, g.bq, g.bk)


def _tile_bias(g, i, j, q_pos, k_pos, bias_args):
  """The position bias of tile (i, j) from the tile's positions, float32, in whatever shape the
  scheme returns that broadcasts against (B, H, bq, bk)."""
  qp = jax.lax.dynamic_slice_in_dim(q_pos, i * g.bq, g.bq, axis=1)
  kp = jax.lax.dynamic_slice_in_dim(k_pos, j * g.bk, g.bk, axis=1)
  return g.bias(qp, kp, *bias_args).astype(jnp.float32)


def _tile_mask(g, i, j, q_seg, k_seg, q_pos, k_pos):
  """Which keys of tile (i, j) each query sees, (1 or B, bq, bk), or None where every query sees
  every key: a tile wholly below the causal diagonal, with no padded key and no packed documents
  (and no local window or chunk, whose bounds are by position). i and j may be traced (in a
  while-loop), and so may the causal offset; the mask is then always built."""
  traced = any(isinstance(x, jax.Array) for x in (i, j, g.causal_offset))
  xp = jnp if traced else np
  q_index = i * g.bq + xp.arange(g.bq)[:, None]
  k_index = j * g.bk + xp.arange(g.bk)[None, :]
  mask = k_index < g.keys  # padded keys
  if g.causal_offset is not None:
    mask = mask & (k_index <= q_index + g.causal_offset)
  mask = None if xp is np and mask.all() else jnp.asarray(mask)[None]
  if q_seg is not None:
    qs = jax.lax.dynamic_slice_in_dim(q_seg, i * g.bq, g.bq, axis=1)
    ks = jax.lax.dynamic_slice_in_dim(k_seg, j * g.bk, g.bk, axis=1)
    same = qs[:, :, None] == ks[:, None, :]  # (B, bq, bk)
    mask = same if mask is None else mask & same
  if g.span:
    local = local_mask(_rows(q_pos, i, g.bq), _rows(k_pos, j, g.bk), g.window, g.chunk)
    mask = local if mask is None else mask & local
  return mask


def _tile_scores(g, q_t, k_t, i, j, q_pos, k_pos, bias_args, row_bias, with_vjp=False):
  """Scores of tile (i, j) plus bias, float32 (B*H, bq, bk); q comes scaled. With `with_vjp`,
  also the VJP of the tile's bias in its parameters (None without parameters)."""
  s = _einsum(g, "nqd,nkd->nqk", q_t, k_t, query_heads=(True, False, True))
  if row_bias is not None:  # a_i - b_j, the tile's slices of the two vectors
    s = s + _rows(row_bias[0], i, g.bq)[:, :, None] - _rows(row_bias[1], j, g.bk)[:, None, :]
  if g.bias is None:
    return (s, None) if with_vjp else s
  consts, params = bias_args
  if with_vjp and params:
    bias, bias_vjp = jax.vjp(lambda p: _tile_bias(g, i, j, q_pos, k_pos, (consts, p)), params)
  else:
    bias, bias_vjp = _tile_bias(g, i, j, q_pos, k_pos, bias_args), None
  s = _per_head(g, _per_head(g, s) + bias)
  if not with_vjp:
    return s
  # The VJP takes d(score) of the tile and sums it to the bias's shape.
  return s, bias_vjp and (lambda ds: bias_vjp(_sum_to(_per_head(g, ds), bias.shape))[0])


def _where(g, mask, x, fill):
  """x (B*H, bq, bk) where mask (1 or B, bq, bk) holds, else fill; None masks nothing. (A 4-D
  view here, as for the bias, made XLA keep more tiles alive: +25% step memory at L=1024.)"""
  if mask is None:
    return x
  if mask.shape[0] > 1:  # one mask per row, the same for every head
    mask = jnp.broadcast_to(mask[:, None], (g.B, g.H, g.bq, g.bk)).reshape(x.shape)
  return jnp.where(mask, x, fill)


def _rows(x, i, size):
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _put_rows(x, update, i, size):
  return jax.lax.dynamic_update_slice_in_dim(x, update.astype(x.dtype), i * size, axis=1)


def _loop(lo, hi, body, carry, unrolled: bool):
  """body(index, carry) for index in [lo, hi): a Python loop or an XLA while-loop."""
  if unrolled:
    for index in range(lo, hi):
      carry = body(index, carry)
    return carry
  return jax.lax.fori_loop(lo, hi, body, carry)


def _unrolled(g) -> bool:
  return not g.dynamic and len(g.tiles) <= UNROLL_MAX_TILES


def forward(g, q, k, v, q_pos, k_pos, q_seg, k_seg, bias_args, row_bias):
  """(output (B*H, Lq, K) in q's dtype, log-normalizer (B*H, Lq) float32), one query tile at a
  time: its running max, normalizer and output stay small and local."""
  n, _, d = q.shape
  unrolled = _unrolled(g)

  def query_tile(i):
    q_i = _rows(q, i, g.bq)

    def visit(j, carry):
      m, l, acc = carry
      s = _tile_scores(g, q_i, _rows(k, j, g.bk), i, j, q_pos, k_pos, bias_args, row_bias)
      s = _where(g, _tile_mask(g, i, j, q_seg, k_seg, q_pos, k_pos), s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(axis=-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row that has seen no key yet
      p = jnp.exp(s - m_safe[..., None])
      correction = jnp.exp(m - m_safe)
      pv = _einsum(g, "nqk,nkd->nqd", p.astype(v.dtype), _rows(v, j, g.bk),
                   query_heads=(True, False, True))
      return m_new, l * correction + p.sum(axis=-1), acc * correction[..., None] + pv

    start = (jnp.full((n, g.bq), -jnp.inf, jnp.float32), jnp.zeros((n, g.bq), jnp.float32),
             jnp.zeros((n, g.bq, d), jnp.float32))
    m, l, acc = _loop(first_key_tile(g, i), key_tiles_seen(g, i), visit, start, unrolled)
    l_safe = jnp.where(l > 0, l, 1.0)  # rows that see no key (padding) give 0
    return ((acc / l_safe[..., None]).astype(q.dtype),
            jnp.where(l > 0, m + jnp.log(l_safe), jnp.inf))

  if unrolled:
    outs, lses = zip(*(query_tile(i) for i in range(g.nq)))
    return jnp.concatenate(outs, axis=1), jnp.concatenate(lses, axis=1)
  outs, lses = jax.lax.map(query_tile, jnp.arange(g.nq))  # (nq, n, bq, ...)
  return (outs.transpose(1, 0, 2, 3).reshape(n, g.nq * g.bq, d),
          lses.transpose(1, 0, 2).reshape(n, g.nq * g.bq))


def _tile_grads(g, i, j, q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg, bias_args,
                row_bias):
  """(dq, dk, dv, d bias params, da, db) of tile (i, j), recomputing its probabilities from
  lse; da, db: the row bias's, (rows of bq,) and (rows of bk,) ((), () without one). dq comes for
  the scaled queries (the scaling outside the kernel carries it to q)."""
  q_t, k_t, v_t, do_t = _rows(q, i, g.bq), _rows(k, j, g.bk), _rows(v, j, g.bk), _rows(do, i, g.bq)
  s, bias_vjp = _tile_scores(g, q_t, k_t, i, j, q_pos, k_pos, bias_args, row_bias, with_vjp=True)
  p = _where(g, _tile_mask(g, i, j, q_seg, k_seg, q_pos, k_pos),
             jnp.exp(s - _rows(lse, i, g.bq)[..., None]), 0.0)
  dv_t = _einsum(g, "nqk,nqd->nkd", p.astype(do.dtype), do_t, query_heads=(True, True, False))
  dp = _einsum(g, "nqd,nkd->nqk", do_t, v_t, query_heads=(True, False, True))
  ds = p * (dp - _rows(delta, i, g.bq)[..., None])  # d loss / d (score + bias)
  # a bias with parameters: their gradient is ds through the tile's bias
  d_params = bias_vjp(ds) if bias_vjp else ()
  # a_i - b_j: a_i takes the row's sum of ds over the keys it sees, b_j minus the column's
  d_a, d_b = ((ds.sum(axis=-1),), (-ds.sum(axis=-2),)) if row_bias is not None else ((), ())
  ds = ds.astype(q.dtype)
  dq_t = _einsum(g, "nqk,nkd->nqd", ds, k_t, query_heads=(True, False, True))
  dk_t = _einsum(g, "nqk,nqd->nkd", ds, q_t, query_heads=(True, True, False))
  return dq_t, dk_t, dv_t, d_params, d_a, d_b


def _sum_to(x, shape):
  """x summed over the axes that broadcasting `shape` to x's shape added or stretched."""
  x = x.sum(axis=tuple(range(x.ndim - len(shape)))) if x.ndim > len(shape) else x
  axes = tuple(a for a, (n, m) in enumerate(zip(shape, x.shape)) if n == 1 and m != 1)
  return x.sum(axis=axes, keepdims=True) if axes else x


def _expanded(g, k, v, k_pos, k_seg, row_bias):
  """The keys the queries meet, laid out: those given, or what g.expand makes of them."""
  if g.expand is None:
    return k, v, k_pos, k_seg, row_bias
  b = None if row_bias is None else row_bias[1]
  k, v, k_pos, k_seg, b = g.expand(k, v, k_pos, k_seg, b)
  return k, v, k_pos, k_seg, None if row_bias is None else (row_bias[0], b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(g, q, k, v, q_pos, k_pos, q_seg, k_seg, bias_args, row_bias, q_offset):
  k, v, k_pos, k_seg, row_bias = _expanded(g, k, v, k_pos, k_seg, row_bias)
  return forward(g.at_offset(q_offset), q, k, v, q_pos, k_pos, q_seg, k_seg, bias_args,
                  row_bias)[0]


def _attention_fwd(g, q, k, v, q_pos, k_pos, q_seg, k_seg, bias_args, row_bias, q_offset):
  made_k, made_v, made_pos, made_seg, made_rows = _expanded(g, k, v, k_pos, k_seg, row_bias)
  o, lse = forward(g.at_offset(q_offset), q, made_k, made_v, q_pos, made_pos, q_seg, made_seg,
                    bias_args, made_rows)
  # the keys as given: with g.expand, made again in the backward pass
  return o, (q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, bias_args, row_bias, q_offset)


def _attention_bwd(g, residuals, do):
  """The keys made again where g.expand makes them, the gradients of what the kernel met, and
  with g.expand those carried back to the keys given (the transpose of making them)."""
  q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, bias_args, row_bias, q_offset = residuals
  if g.expand is None:
    return gradients(g, q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, bias_args, row_bias,
                      q_offset, do)
  b = None if row_bias is None else row_bias[1]
  # Made from values that depend on the incoming gradient, so that XLA cannot merge making them
  # again with making them in the forward pass, which would keep the made keys alive in between
  # (as an optimization barrier would say, but XLA's CPU pipeline drops those before merging).
  # 0 (never NaN, whatever the gradient holds), but only once the backward pass runs
  after = 0.0 * jnp.isfinite(do.reshape(-1)[0]).astype(jnp.float32)
  k, v = (x + after.astype(x.dtype) for x in (k, v))
  b = None if b is None else b + after
  made_pos, made_seg = g.expand(k, v, k_pos, k_seg, b)[2:4]  # (its keys and values unused)

  def made_floats(k, v, b):
    made = g.expand(k, v, k_pos, k_seg, b)
    return made[0], made[1], made[4]

  (made_k, made_v, made_b), back = jax.vjp(made_floats, k, v, b)
  made_rows = None if row_bias is None else (row_bias[0], made_b)
  grads = gradients(g, q, made_k, made_v, o, lse, q_pos, made_pos, q_seg, made_seg, bias_args,
                     made_rows, q_offset, do)
  d_rows = grads[8]
  dk, dv, db = back((grads[1], grads[2], None if d_rows is None else d_rows[1]))
  no_grad = lambda x: None if x is None else np.zeros(x.shape, jax.dtypes.float0)
  return (grads[0], dk, dv, grads[3], no_grad(k_pos), grads[5], no_grad(k_seg), grads[7],
          None if d_rows is None else (d_rows[0], db), grads[9])


def gradients(g, q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, bias_args, row_bias, q_offset,
               do):
  """One key tile at a time: its dK and dV accumulate locally over the query tiles that see it;
  dQ accumulates across key tiles."""
  g = g.at_offset(q_offset)
  bias_consts, bias_params = bias_args
  n, _, d = q.shape
  n_kv = k.shape[0]  # B*G: the key/value heads' rows
  # D_i = sum_d dO_id O_id: the softmax backward's row term, once per query.
  delta = jnp.einsum("nqd,nqd->nq", do.astype(jnp.float32), o.astype(jnp.float32))
  tile = lambda i, j: _tile_grads(g, i, j, q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg,
                                  bias_args, row_bias)
  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  key_start = lambda: (jnp.zeros((n_kv, g.bk, d), jnp.float32),
                       jnp.zeros((n_kv, g.bk, d), jnp.float32))
  # The row bias's gradients, accumulated as dQ's (a: per query row) and dK's (b: per key tile)
  # are; empty tuples without a row bias, so nothing is carried.
  row_zeros = lambda length: ((jnp.zeros((n, length), jnp.float32),) if row_bias is not None
                              else ())
  add = functools.partial(jax.tree.map, jnp.add)

  if _unrolled(g):
    dq = [jnp.zeros((n, g.bq, d), jnp.float32) for _ in range(g.nq)]
    da = [row_zeros(g.bq) for _ in range(g.nq)]
    dk, dv, db, dbias = [], [], [], jax.tree.map(zeros, bias_params)
    for j in range(g.nk):
      (dk_j, dv_j), db_j = key_start(), row_zeros(g.bk)
      for i in range(first_query_tile(g, j), query_tiles_end(g, j)):
        if key_tiles_seen(g, i) <= j or first_key_tile(g, i) > j:
          continue
        dq_t, dk_t, dv_t, d_params, da_t, db_t = tile(i, j)
        dq[i], dk_j, dv_j = dq[i] + dq_t, dk_j + dk_t, dv_j + dv_t
        da[i], db_j, dbias = add(da[i], da_t), add(db_j, db_t), add(dbias, d_params)
      dk.append(dk_j)
      dv.append(dv_j)
      db.append(db_j)
    dq, dk, dv = (jnp.concatenate(x, axis=1) for x in (dq, dk, dv))
    da, db = (jax.tree.map(lambda *x: jnp.concatenate(x, axis=1), *parts) for parts in (da, db))
  else:
    def key_tile(carry, j):
      def visit(i, inner):
        dk_j, dv_j, db_j, dq, da, dbias = inner
        dq_t, dk_t, dv_t, d_params, da_t, db_t = tile(i, j)
        dq = _put_rows(dq, _rows(dq, i, g.bq) + dq_t, i, g.bq)  # in place in the loop
        da = jax.tree.map(lambda a, t: _put_rows(a, _rows(a, i, g.bq) + t, i, g.bq), da, da_t)
        return dk_j + dk_t, dv_j + dv_t, add(db_j, db_t), dq, da, add(dbias, d_params)

      dk_j, dv_j, db_j, dq, da, dbias = jax.lax.fori_loop(
          first_query_tile(g, j), query_tiles_end(g, j), visit,
          (*key_start(), row_zeros(g.bk), *carry))
      return (dq, da, dbias), (dk_j, dv_j, db_j)

    start = (zeros(q), row_zeros(q.shape[1]), jax.tree.map(zeros, bias_params))
    (dq, da, dbias), (dk, dv, db) = jax.lax.scan(key_tile, start, jnp.arange(g.nk))
    dk, dv = (x.transpose(1, 0, 2, 3).reshape(n_kv, g.nk * g.bk, d) for x in (dk, dv))
    db = jax.tree.map(lambda x: x.transpose(1, 0, 2).reshape(n, g.nk * g.bk), db)
  d_row_bias = (da[0], db[0]) if row_bias is not None else None
  dbias = jax.tree.map(lambda d_, p: d_.astype(p.dtype), dbias, bias_params)
  # Integer inputs have no gradient (segment ids may be None: no packed documents).
  no_grad = lambda x: None if x is None else np.zeros(x.shape, jax.dtypes.float0)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), no_grad(q_pos),
          no_grad(k_pos), no_grad(q_seg), no_grad(k_seg),
          (tuple(map(no_grad, bias_consts)), dbias), d_row_bias, no_grad(q_offset))


_attention.defvjp(_attention_fwd, _attention_bwd)
