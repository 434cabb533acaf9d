"""Flash attention as a Pallas kernel with the position bias computed inside each tile.

The same algorithm as lcx.attention.blockwise (online softmax over key tiles, the backward pass
recomputing each tile's probabilities from the saved log-normalizer), written as Pallas kernels so
that on a GPU (Pallas' Triton lowering) a tile's scores, bias, mask and softmax stay in on-chip memory:
  - forward: one program per (batch row, head, query tile), looping over the key tiles it sees;
  - backward: one program per (row, head, key tile) for dK, dV and the bias parameters'
    gradient, looping over the query tiles that see it; one per (row, head, query tile) for dQ.
Tiles wholly above the causal diagonal are never visited (the loops' bounds come from the tile
index), packed documents are kept apart by segment ids compared per tile, and the scheme's bias
is its own function (the lcx.positions.Bias the model hands every kernel) evaluated on the tile's
query and key positions, FlexAttention's score modification: no L x L array exists anywhere, and
a learned bias (T5, KERPLE, FIRE) gets its parameters' gradient from the backward kernel, each
program adding up its tiles' share. A bias of two per-row vectors (row_bias: a_i - b_j, data-
dependent) is read as a program's slices of them; the dQ programs write a's gradient (row sums of
dS), the dK/dV programs b's (minus column sums).

A program evaluates its own head's bias where the bias's per-head values are recognized (they
reach it as its head's entry, see _head_columns: every scheme lcx has); otherwise the bias
function returns every head at once ((1, H, bq, bk)) and the program keeps its head's slice (a
one-hot sum, which lowers where an indexed read of a computed value does not). On a CPU the
kernels run in Pallas' interpret mode: slow, and exactly what the tests compare with dense, both
in the generic interpreter and in the TPU one (`pltpu.force_tpu_interpret_mode`, which simulates
Mosaic's memory spaces); on a TPU they compile through Mosaic.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

from lcx.attention.tiles import (DEFAULT_BLOCK, Geometry, first_key_tile, first_query_tile,
                                hoisted_bias, key_tiles_seen, query_tiles_end)
from lcx.positions.bias import Bias

_NO_KEY = -jnp.inf  # a masked score; a row that sees no key at all is handled apart (lse = inf)


def pallas_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                     q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True,
                     window: int = 0, chunk: int = 0, row_bias=None,
                     block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK,
                     interpret: bool | None = None, platform: str | None = None):
  """Same signature and result as lcx.attention.library.dense_attention. `interpret` (default:
  on a CPU) runs the kernels in Pallas' interpreter; `platform` ("gpu" or "tpu", default: this
  backend's) is the compiler the kernels are written for (a test lowers for one without it)."""
  if (window or chunk) and not causal:
    raise ValueError("a local attention window or chunk needs causal attention")
  B, Q, H, K = q_BQHK.shape
  S, G = k_BKHK.shape[1], k_BKHK.shape[2]
  bq, bk = min(block_q, Q), min(block_k, S)
  nq, nk = -(-Q // bq), -(-S // bk)
  pad_q, pad_k = nq * bq - Q, nk * bk - S
  packed = q_segment_ids_BQ is not None

  def as_rows(x, pad):  # (B, L) -> (B, 1, L + pad): Mosaic's blocks must span or tile the
    return jnp.pad(x.astype(jnp.int32), ((0, 0), (0, pad)))[:, None]  # last two axes

  q_seg = k_seg = None
  if packed:
    q_seg, k_seg = as_rows(q_segment_ids_BQ, pad_q), as_rows(k_segment_ids_BK, pad_k)
  q_pos, k_pos = as_rows(q_positions_BQ, pad_q), as_rows(k_positions_BK, pad_k)
  # The bias as a pure function of one row's tile positions and its closed-over values.
  if isinstance(bias_fn, Bias):  # a scheme's: the form written for a device kernel
    bias_fn = bias_fn.per_tile()
  bias, (consts, params) = hoisted_bias(bias_fn, q_pos[:1, 0, :bq], k_pos[:1, 0, :bk])
  heads = _head_columns(bias, consts, params, H, bq, bk)
  const_heads, param_heads = heads[:len(consts)], heads[len(consts):]
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  if platform is None:
    platform = jax.default_backend()
  geometry = Geometry(B=B, H=H, R=H // G, K=K, bq=bq, bk=bk, nq=nq, nk=nk, keys=S,
                       causal_offset=S - Q if causal else None, packed=packed, bias=bias,
                       window=window, chunk=chunk, span=window or chunk,
                       row_bias=row_bias is not None,
                       const_shapes=_shapes_seen(consts, const_heads), const_heads=const_heads,
                       param_shapes=_shapes_seen(params, param_heads), param_heads=param_heads,
                       interpret=interpret, platform=platform)

  def heads_first(x, pad):  # (B, L, H or G, K) -> (B, H or G, L + pad, K)
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

  q_scaled = q_BQHK * jnp.asarray(1.0 / np.sqrt(K), q_BQHK.dtype)
  if row_bias is not None:  # (B, H, L) each -> (B, H, 1, L + pad) float32, as the lse's layout
    per_row = lambda x, pad: jnp.pad(x.astype(jnp.float32), ((0, 0), (0, 0), (0, pad)))[:, :, None]
    row_bias = (per_row(row_bias[0], pad_q), per_row(row_bias[1], pad_k))
  o = _attention(geometry, heads_first(q_scaled, pad_q), heads_first(k_BKHK, pad_k),
                 heads_first(v_BKHK, pad_k), q_pos, k_pos, q_seg, k_seg,
                 tuple(map(_operand, consts, const_heads)),
                 tuple(map(_operand, params, param_heads)), row_bias)
  return o[:, :, :Q].transpose(0, 2, 1, 3)


def _head_columns(bias, consts, params, H, bq, bk):
  """For each value the bias reads, whether a program receives only its own head's slice of it.

  A bias evaluated for every head in every program does H times the work one head needs. Once
  the work on parameters alone is done outside the kernel (lcx.attention.tiles), a per-head value
  reaches the tile as a (1, H, 1, 1) column (ALiBi's slopes, a T5 row, KERPLE's r1 and r2, FIRE's
  output weights): then each program reads its head's entry and evaluates one head's bias. Any
  other value with an axis of H entries may be per head in a way not recognized here: then every
  program evaluates all heads and keeps its own (always right, H times the work)."""
  values = (*consts, *params)
  column = [np.shape(x) == (1, H, 1, 1) for x in values]
  if (bias is None or H == 1 or not any(column)
      or any(H in np.shape(x) and not c for x, c in zip(values, column))):
    return (False,) * len(values)
  heads = column[:len(consts)], column[len(consts):]
  one_head = lambda xs, heads: [jax.ShapeDtypeStruct(shape, x.dtype)
                                for x, shape in zip(xs, _shapes_seen(xs, heads))]
  try:  # an operation with the head count in its own parameters refuses a single head
    out = jax.eval_shape(bias, jax.ShapeDtypeStruct((1, bq), jnp.int32),
                         jax.ShapeDtypeStruct((1, bk), jnp.int32), one_head(consts, heads[0]),
                         one_head(params, heads[1]))
  except (TypeError, ValueError):
    return (False,) * len(values)
  if len(out.shape) >= 3 and out.shape[-3] != 1:
    return (False,) * len(values)
  return tuple(column)


def _shapes_seen(values, heads):
  """The shapes the bias function is evaluated with in a program."""
  return tuple((1, 1, 1, 1) if head else np.shape(x) for x, head in zip(values, heads))


def _operand(x, head):
  """How a value the bias reads is handed to the kernels: a per-head column as (H, 1, 1) (a
  program's block is its head's (1, 1)); others whole, scalars and vectors as (1, n) (a kernel's
  operands have at least one axis, and Mosaic wants a block's last two axes to be the array's)."""
  x = jnp.asarray(x)
  if head:
    return x.reshape(-1, 1, 1)
  return x.reshape(1, -1) if x.ndim < 2 else x


# --- what every kernel does to a tile -------------------------------------------------------------

def _key_tiles_seen(g, i):
  return key_tiles_seen(g, i, jax.lax.div)  # one integer op in the kernel (floor is three)


def _first_query_tile(g, j):
  return first_query_tile(g, j, jax.lax.div)


def _first_key_tile(g, i):  # a negative quotient truncates toward 0 here, clipped to 0 either way
  return first_key_tile(g, i, jax.lax.div)


def _query_tiles_end(g, j):
  return query_tiles_end(g, j, jax.lax.div)


def _tile_bias(g, h, q_pos, k_pos, consts, params):
  """Head h's bias of the tile with these positions ((1, bq) and (1, bk)), (bq, bk) float32."""
  consts = [c.reshape(shape) for c, shape in zip(consts, g.const_shapes)]
  params = [p.reshape(shape) for p, shape in zip(params, g.param_shapes)]
  bias = g.bias(q_pos, k_pos, consts, params).astype(jnp.float32)
  bias = jnp.broadcast_to(bias, (*(1,) * (4 - bias.ndim), *bias.shape))[0]  # (1 or H, bq, bk)
  if bias.shape[0] == 1:
    return jnp.broadcast_to(bias[0], (g.bq, g.bk))
  one_hot = (jnp.arange(g.H) == h).astype(jnp.float32)[:, None, None]
  return jnp.broadcast_to((bias * one_hot).sum(axis=0), (g.bq, g.bk))


def _tile_scores(g, h, i, j, q, k, pos, seg, consts, params, rows=None):
  """Scores plus bias of tile (i, j) for head h, float32 (bq, bk), masked keys at -inf; and
  the mask (None: every key is seen). `rows`: the row bias's (a (bq,), b (bk,)) for the tile."""
  q_pos_ref, k_pos_ref = pos
  q_rows, k_rows = pl.ds(i * g.bq, g.bq), pl.ds(j * g.bk, g.bk)
  s = jnp.dot(q, k.T, preferred_element_type=jnp.float32)
  if rows is not None:
    s = s + rows[0][:, None] - rows[1][None, :]
  if g.bias is not None:
    s = s + _tile_bias(g, h, q_pos_ref[:, q_rows], k_pos_ref[:, k_rows], consts, params)
  q_index = i * g.bq + jnp.arange(g.bq)[:, None]
  k_index = j * g.bk + jnp.arange(g.bk)[None, :]
  mask = k_index < g.keys  # padded keys
  if g.causal_offset is not None:
    mask = mask & (k_index <= q_index + g.causal_offset)
  if g.packed:
    q_seg_ref, k_seg_ref = seg
    mask = mask & (q_seg_ref[0, q_rows][:, None] == k_seg_ref[:, k_rows])
  if g.span:  # a local layer: by position, as lcx.attention.library.local_mask
    qp, kp = q_pos_ref[0, q_rows][:, None], k_pos_ref[0, k_rows][None, :]
    if g.window:
      mask = mask & (qp - kp < g.window)
    if g.chunk:
      mask = mask & (jax.lax.div(qp, g.chunk) == jax.lax.div(kp, g.chunk))
  return jnp.where(mask, s, _NO_KEY), mask


def _load_bias_args(g, const_refs, param_refs):
  return [r[...] for r in const_refs], [r[...] for r in param_refs]


# --- forward ----------------------------------------------------------------------------------------

def _forward_kernel(g, q_ref, k_ref, v_ref, q_pos_ref, k_pos_ref, *rest):
  """Program (b, h, i): query tile i of head h, over the key tiles it sees."""
  seg, rest = (rest[:2], rest[2:]) if g.packed else ((), rest)
  row_refs, rest = (rest[:2], rest[2:]) if g.row_bias else ((), rest)  # a's tile, b's whole row
  n_c, n_p = len(g.const_shapes), len(g.param_shapes)
  const_refs, param_refs, (o_ref, lse_ref) = rest[:n_c], rest[n_c:n_c + n_p], rest[n_c + n_p:]
  consts, params = _load_bias_args(g, const_refs, param_refs)
  h, i = pl.program_id(1), pl.program_id(2)
  q = q_ref[...]

  def visit(j, carry):
    m, l, acc = carry
    k = k_ref[pl.ds(j * g.bk, g.bk), :]
    rows = (row_refs[0][0], row_refs[1][0, pl.ds(j * g.bk, g.bk)]) if g.row_bias else None
    s, _ = _tile_scores(g, h, i, j, q, k, (q_pos_ref, k_pos_ref), seg, consts, params, rows)
    m_new = jnp.maximum(m, s.max(axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row that has seen no key yet
    p = jnp.exp(s - m_safe[:, None])
    correction = jnp.exp(m - m_safe)
    pv = jnp.dot(p.astype(v_ref.dtype), v_ref[pl.ds(j * g.bk, g.bk), :],
                 preferred_element_type=jnp.float32)
    return m_new, l * correction + p.sum(axis=-1), acc * correction[:, None] + pv

  start = (jnp.full((g.bq,), -jnp.inf, jnp.float32), jnp.zeros((g.bq,), jnp.float32),
           jnp.zeros((g.bq, g.K), jnp.float32))
  m, l, acc = jax.lax.fori_loop(_first_key_tile(g, i), _key_tiles_seen(g, i), visit, start)
  l_safe = jnp.where(l > 0, l, 1.0)  # rows that see no key (padding) give 0
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(l > 0, m + jnp.log(l_safe), jnp.inf)[None]


def _side_specs(g, consts, params):
  """BlockSpecs of what every program reads in part: its row's positions and segment ids (whole
  rows: a program slices its tiles), and the bias's values (whole, or the program's head's)."""
  row = lambda length: pl.BlockSpec((None, 1, length), lambda b, h, t: (b, 0, 0))
  specs = [row(g.nq * g.bq), row(g.nk * g.bk)]
  if g.packed:
    specs += [row(g.nq * g.bq), row(g.nk * g.bk)]
  heads = (*g.const_heads, *g.param_heads)
  return specs + [_value_spec(x.shape, head) for x, head in zip((*consts, *params), heads)]


def _value_spec(shape, head):
  if head:  # (H, 1, 1): the program's head
    return pl.BlockSpec((None, 1, 1), lambda b, h, t: (h, 0, 0))
  return pl.BlockSpec(shape, lambda b, h, t: (0,) * len(shape))


def _compiler_params(g):
  """Which compiler the kernels are lowered by. On a GPU, Triton: jax's default there is now
  Mosaic GPU, which lowers neither a transposed tile nor these kernels' loops."""
  if g.interpret:
    return None
  if g.platform == "gpu":
    return pl_triton.CompilerParams(num_warps=4, num_stages=2)
  if g.platform == "tpu":
    # Every program writes its own output block: the grid may be split between cores.
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * 3)
  raise ValueError(f"the Pallas kernel compiles for gpu or tpu, not {g.platform!r} "
                   "(on a CPU it runs interpreted)")


def _call(g, kernel, grid, in_specs, out_specs, out_shape, name):
  return pl.pallas_call(functools.partial(kernel, g), grid=grid, in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, interpret=g.interpret,
                        compiler_params=_compiler_params(g), name=name)


def _kv_head(g):
  """Query head h's key/value head: h itself, or its group's with R query heads per group
  (grouped-query attention: each program reads its group's keys, never a repeated copy)."""
  return (lambda h: h) if g.R == 1 else (lambda h: h // g.R)


def _forward(g, q, k, v, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias):
  """(output (B, H, Lq, K) in q's dtype, log-normalizer (B, H, 1, Lq) float32)."""
  Lq, Lk = g.nq * g.bq, g.nk * g.bk
  kv = _kv_head(g)
  in_specs = [pl.BlockSpec((None, None, g.bq, g.K), lambda b, h, i: (b, h, i, 0)),
              pl.BlockSpec((None, None, Lk, g.K), lambda b, h, i: (b, kv(h), 0, 0)),
              pl.BlockSpec((None, None, Lk, g.K), lambda b, h, i: (b, kv(h), 0, 0)),
              *_side_specs(g, consts, params)]
  out_specs = [pl.BlockSpec((None, None, g.bq, g.K), lambda b, h, i: (b, h, i, 0)),
               pl.BlockSpec((None, None, 1, g.bq), lambda b, h, i: (b, h, 0, i))]
  out_shape = [jax.ShapeDtypeStruct((g.B, g.H, Lq, g.K), q.dtype),
               jax.ShapeDtypeStruct((g.B, g.H, 1, Lq), jnp.float32)]
  segs = (q_seg, k_seg) if g.packed else ()
  row_specs = [pl.BlockSpec((None, None, 1, g.bq), lambda b, h, i: (b, h, 0, i)),
               pl.BlockSpec((None, None, 1, Lk), lambda b, h, i: (b, h, 0, 0))]
  if g.row_bias:  # after the segment ids' specs, before the bias values'
    n_side = 2 + 2 * g.packed
    in_specs = in_specs[:3 + n_side] + row_specs + in_specs[3 + n_side:]
  return _call(g, _forward_kernel, (g.B, g.H, g.nq), in_specs, out_specs, out_shape,
               "lcx_attention_forward")(q, k, v, q_pos, k_pos, *segs, *(row_bias or ()), *consts,
                                        *params)


# --- backward ---------------------------------------------------------------------------------------

def _tile_ds(g, h, i, j, q, k, v, do, lse, delta, pos, seg, consts, params, rows=None):
  """(p, ds) of tile (i, j): the probabilities recomputed from lse, and d loss / d (score +
  bias)."""
  s, mask = _tile_scores(g, h, i, j, q, k, pos, seg, consts, params, rows)
  p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
  dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
  return p, p * (dp - delta[:, None])


def _dkv_kernel(g, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_pos_ref, k_pos_ref, *rest):
  """Program (b, h, j): dK and dV of key tile j and its share of the bias parameters' gradient,
  over the query tiles that see it."""
  seg, rest = (rest[:2], rest[2:]) if g.packed else ((), rest)
  row_refs, rest = (rest[:2], rest[2:]) if g.row_bias else ((), rest)  # a's whole row, b's tile
  n_c, n_p = len(g.const_shapes), len(g.param_shapes)
  const_refs, param_refs, outs = rest[:n_c], rest[n_c:n_c + n_p], rest[n_c + n_p:]
  dk_ref, dv_ref = outs[0], outs[1]
  db_ref, dparam_refs = (outs[2], outs[3:]) if g.row_bias else (None, outs[2:])
  consts, params = _load_bias_args(g, const_refs, param_refs)
  h, j = pl.program_id(1), pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  pos = (q_pos_ref, k_pos_ref)

  def visit(i, carry):
    dk, dv, db, dparams = carry
    rows = pl.ds(i * g.bq, g.bq)
    q, do = q_ref[rows, :], do_ref[rows, :]
    lse, delta = lse_ref[0, rows], delta_ref[0, rows]
    tile_rows = (row_refs[0][0, rows], row_refs[1][0]) if g.row_bias else None
    p, ds = _tile_ds(g, h, i, j, q, k, v, do, lse, delta, pos, seg, consts, params, tile_rows)
    if g.row_bias:  # b_j enters every score of its column with a minus sign
      db = db - ds.sum(axis=0)
    if params:  # the tile's bias in its parameters, pulled back from ds
      _, pullback = jax.vjp(
          lambda ps: _tile_bias(g, h, q_pos_ref[:, rows], k_pos_ref[:, pl.ds(j * g.bk, g.bk)],
                                consts, ps), params)
      dparams = [a + b for a, b in zip(dparams, pullback(ds)[0])]
    dv = dv + jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
    dk = dk + jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32)
    return dk, dv, db, dparams

  zeros = jnp.zeros((g.bk, g.K), jnp.float32)
  dparams = [jnp.zeros(p.shape, jnp.float32) for p in params]
  dk, dv, db, dparams = jax.lax.fori_loop(_first_query_tile(g, j), _query_tiles_end(g, j), visit,
                                          (zeros, zeros, jnp.zeros((g.bk,), jnp.float32),
                                           dparams))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  if g.row_bias:
    db_ref[...] = db[None]
  for ref, d in zip(dparam_refs, dparams):
    ref[...] = d


def _dq_kernel(g, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_pos_ref, k_pos_ref, *rest):
  """Program (b, h, i): dQ of query tile i (and the row bias's a), over the key tiles it sees."""
  seg, rest = (rest[:2], rest[2:]) if g.packed else ((), rest)
  row_refs, rest = (rest[:2], rest[2:]) if g.row_bias else ((), rest)  # a's tile, b's whole row
  n_c, n_p = len(g.const_shapes), len(g.param_shapes)
  const_refs, param_refs, outs = rest[:n_c], rest[n_c:n_c + n_p], rest[n_c + n_p:]
  consts, params = _load_bias_args(g, const_refs, param_refs)
  h, i = pl.program_id(1), pl.program_id(2)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[0], delta_ref[0]

  def visit(j, carry):
    dq, da = carry
    cols = pl.ds(j * g.bk, g.bk)
    k = k_ref[cols, :]
    rows = (row_refs[0][0], row_refs[1][0, cols]) if g.row_bias else None
    _, ds = _tile_ds(g, h, i, j, q, k, v_ref[cols, :], do, lse, delta, (q_pos_ref, k_pos_ref),
                     seg, consts, params, rows)
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32), (
        da + ds.sum(axis=1))  # a_i enters every score of its row

  dq, da = jax.lax.fori_loop(_first_key_tile(g, i), _key_tiles_seen(g, i), visit,
                             (jnp.zeros((g.bq, g.K), jnp.float32), jnp.zeros((g.bq,), jnp.float32)))
  outs[0][...] = dq.astype(outs[0].dtype)
  if g.row_bias:
    outs[1][...] = da[None]


def _backward(g, q, k, v, o, lse, do, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias):
  Lq, Lk = g.nq * g.bq, g.nk * g.bk
  # D_i = sum_d dO_id O_id: the softmax backward's row term, once per query.
  delta = jnp.einsum("bhqd,bhqd->bhq", do.astype(jnp.float32), o.astype(jnp.float32))[:, :, None]
  segs = (q_seg, k_seg) if g.packed else ()
  operands = (q, k, v, do, lse, delta, q_pos, k_pos, *segs, *(row_bias or ()), *consts, *params)
  side_specs = _side_specs(g, consts, params)
  n_side = 2 + 2 * g.packed  # positions and segment ids; the row bias's specs go after them
  with_rows = lambda specs, rows: (specs[:n_side] + rows + specs[n_side:]) if g.row_bias else specs
  kv = _kv_head(g)
  all_q = pl.BlockSpec((None, None, Lq, g.K), lambda b, h, t: (b, h, 0, 0))
  all_k = pl.BlockSpec((None, None, Lk, g.K), lambda b, h, t: (b, kv(h), 0, 0))
  all_rows = pl.BlockSpec((None, None, 1, Lq), lambda b, h, t: (b, h, 0, 0))
  key_tile = pl.BlockSpec((None, None, g.bk, g.K), lambda b, h, j: (b, h, j, 0))
  kv_tile = pl.BlockSpec((None, None, g.bk, g.K), lambda b, h, j: (b, kv(h), j, 0))
  query_tile = pl.BlockSpec((None, None, g.bq, g.K), lambda b, h, i: (b, h, i, 0))
  query_rows = pl.BlockSpec((None, None, 1, g.bq), lambda b, h, i: (b, h, 0, i))
  key_rows = pl.BlockSpec((None, None, 1, g.bk), lambda b, h, j: (b, h, 0, j))
  all_key_rows = pl.BlockSpec((None, None, 1, Lk), lambda b, h, t: (b, h, 0, 0))
  db_out = ([key_rows], [jax.ShapeDtypeStruct((g.B, g.H, 1, Lk), jnp.float32)]) if g.row_bias \
      else ([], [])

  # dK, dV (and the bias parameters: one partial sum per program, added up here)
  # A program's share of a parameter's gradient, in the block it reads (a head's: (1, 1)).
  param_shapes = [(1, 1) if head else p.shape for p, head in zip(params, g.param_heads)]
  # Each program writes its query head's share of dK, dV; with groups (R > 1) they are added up
  # here, in float32.
  kv_grad = (lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)) if g.R == 1 else (
      lambda x: jax.ShapeDtypeStruct((g.B, g.H, *x.shape[2:]), jnp.float32))
  out = _call(g, _dkv_kernel, (g.B, g.H, g.nk),
              [all_q, kv_tile, kv_tile, all_q, all_rows, all_rows,
               *with_rows(side_specs, [all_rows, key_rows])],
              [key_tile, key_tile, *db_out[0],
               *(pl.BlockSpec((None, None, None, *s), lambda b, h, j, n=len(s): (b, h, j,
                                                                                 *(0,) * n))
                 for s in param_shapes)],
              [kv_grad(k), kv_grad(v), *db_out[1],
               *(jax.ShapeDtypeStruct((g.B, g.H, g.nk, *s), jnp.float32) for s in param_shapes)],
              "lcx_attention_dkv")(*operands)
  dk, dv = out[0], out[1]
  db, out = (out[2], [*out[:2], *out[3:]]) if g.row_bias else (None, out)
  if g.R > 1:
    dk, dv = (d.reshape(g.B, -1, g.R, *d.shape[2:]).sum(2).astype(x.dtype)
              for d, x in ((dk, k), (dv, v)))
  dparams = [d.sum(axis=(0, 2)) if head else d.sum(axis=(0, 1, 2))  # a head's: (H, 1, 1)
             for d, head in zip(out[2:], g.param_heads)]
  dq_out = ([query_tile, query_rows], [jax.ShapeDtypeStruct(q.shape, q.dtype),
                                        jax.ShapeDtypeStruct((g.B, g.H, 1, Lq), jnp.float32)])
  n_out = 1 + g.row_bias
  dq = _call(g, _dq_kernel, (g.B, g.H, g.nq),
             [query_tile, all_k, all_k, query_tile, query_rows, query_rows,
              *with_rows(side_specs, [query_rows, all_key_rows])],
             dq_out[0][:n_out], dq_out[1][:n_out], "lcx_attention_dq")(*operands)
  dq, d_rows = (dq[0], (dq[1], db)) if g.row_bias else (dq[0], None)
  return dq, dk, dv, dparams, d_rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(g, q, k, v, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias):
  return _forward(g, q, k, v, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias)[0]


def _attention_fwd(g, q, k, v, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias):
  o, lse = _forward(g, q, k, v, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias)
  return o, (q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias)


def _attention_bwd(g, residuals, do):
  q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, consts, params, row_bias = residuals
  dq, dk, dv, dparams, d_rows = _backward(g, q, k, v, o, lse, do, q_pos, k_pos, q_seg, k_seg,
                                          consts, params, row_bias)
  # None: no gradient for positions, segment ids and the bias's fixed values
  return (dq, dk, dv, None, None, None, None, tuple(None for _ in consts),
          tuple(d.reshape(p.shape).astype(p.dtype) for d, p in zip(dparams, params)), d_rows)


_attention.defvjp(_attention_fwd, _attention_bwd)
