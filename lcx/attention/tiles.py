"""What the tiled kernels (blockwise, pallas) share: the tile length, which tiles a causal call
visits, the static description of a call, and the position bias split into its work on
parameters (done once, outside the tiles) and its work on positions (done per tile)."""
import operator

import jax
import jax.numpy as jnp

DEFAULT_BLOCK = 128  # query and key tile length: 128 was fastest on CPU (benchmarks/README.md)


def visible_tiles(nq, nk, bq, bk, offset, span: int = 0):
  """(i, j) of every tile holding a key some query may see: query q sees key k <= q + offset,
  and with a local span (a window or chunk length) only keys k > q + offset - span."""
  return tuple((i, j) for i in range(nq) for j in range(nk)
               if (offset is None or j * bk <= (i + 1) * bq - 1 + offset)
               and (not span or i * bq + offset - ((j + 1) * bk - 1) < span))


def first_key_tile(g, i, div=operator.floordiv):
  """The first key tile query tile i visits: 0, or with a local span the first that holds a key
  within span of the tile's first query (index distance bounds position distance from below, so
  tiles farther back hold no key the window or chunk lets a query see)."""
  if not g.span:
    return 0
  first = div(i * g.bq + g.causal_offset - g.span + 1, g.bk)
  return jnp.maximum(first, 0) if isinstance(first, jax.Array) else max(first, 0)


def query_tiles_end(g, j, div=operator.floordiv):
  """One past the last query tile that sees key tile j: nq, or with a local span the last whose
  first query is within span of the tile's last key."""
  if not g.span:
    return g.nq
  end = div((j + 1) * g.bk - 1 - g.causal_offset + g.span - 1, g.bq) + 1
  return jnp.minimum(end, g.nq) if isinstance(end, jax.Array) else min(end, g.nq)


def key_tiles_seen(g, i, div=operator.floordiv):
  """How many key tiles (from the first) query tile i of a call with geometry g visits; i may be
  traced, and so may g's causal offset. `div`: the integer division the kernel's compiler lowers
  (Pallas: lax.div, which truncates; the same as floor here, where a negative quotient is clipped
  to 0)."""
  if g.causal_offset is None:
    return g.nk
  seen = div((i + 1) * g.bq - 1 + g.causal_offset, g.bk) + 1
  return jnp.clip(seen, 0, g.nk) if isinstance(seen, jax.Array) else min(max(seen, 0), g.nk)


def first_query_tile(g, j, div=operator.floordiv):
  """The first query tile that sees key tile j; j may be traced. (Past the last query tile, nq or
  more, only where keys follow the queries: a traced query offset.)"""
  if g.causal_offset is None:
    return 0
  first = div(j * g.bk - g.causal_offset, g.bq)
  return jnp.maximum(first, 0) if isinstance(first, jax.Array) else max(first, 0)


def hoisted_bias(bias_fn, q_pos_tile, k_pos_tile):
  """(pure bias(q_pos, k_pos, consts, params), (consts, params)): every value bias_fn closes over
  becomes an explicit argument of the custom VJP, which returns the gradient of the float ones
  (learned biases' parameters) and none for the rest (a layer index traced by a scan over layers:
  left closed over, it would leak out of the VJP).

  What does not depend on the positions (taking a layer's slice of a parameter, clipping it,
  reshaping a table) runs here, once, in the caller's trace, where autodiff reaches it as usual;
  only the rest runs per tile. So a kernel sees no more than the bias's work on positions (and a
  device kernel none of the slicing its compiler may not lower)."""
  import jax.extend.core as jax_core  # it loads Pallas' internals: only where a kernel runs
  if bias_fn is None:
    return None, ((), ())
  closed = jax.make_jaxpr(bias_fn)(q_pos_tile, k_pos_tile)
  if not closed.out_avals:
    return None, ((), ())
  jaxpr = closed.jaxpr
  read = lambda env, v: v.val if isinstance(v, jax_core.Literal) else env[v]
  # Parameters: traced floats, and whatever is computed from them. Concrete arrays (ALiBi's
  # slopes) are constants: no gradient work.
  env = dict(zip(jaxpr.constvars, closed.consts))
  learned = {v for v, c in env.items()
             if isinstance(c, jax.core.Tracer) and jnp.issubdtype(c.dtype, jnp.inexact)}
  per_tile, tiled = [], set(jaxpr.invars)
  for eqn in jaxpr.eqns:
    uses = [v for v in eqn.invars if not isinstance(v, jax_core.Literal)]
    if any(v in tiled for v in uses):
      per_tile.append(eqn)
      tiled.update(eqn.outvars)
      continue
    _evaluate(eqn, env, [read(env, v) for v in eqn.invars])
    if any(v in learned for v in uses):
      learned.update(eqn.outvars)
  # The values the per-tile part reads (and an output that needs no position at all).
  needed = [v for eqn in per_tile for v in eqn.invars] + list(jaxpr.outvars)
  inputs = list(dict.fromkeys(v for v in needed if not isinstance(v, jax_core.Literal)
                              and v not in tiled and v not in jaxpr.invars))
  is_param = [v in learned and jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in inputs]
  consts = tuple(env[v] for v, p in zip(inputs, is_param) if not p)
  params = tuple(env[v] for v, p in zip(inputs, is_param) if p)

  def pure(q_pos, k_pos, consts, params):
    consts, params = iter(consts), iter(params)
    tile_env = {v: next(params) if p else next(consts) for v, p in zip(inputs, is_param)}
    tile_env.update(zip(jaxpr.invars, (q_pos, k_pos)))
    for eqn in per_tile:
      _evaluate(eqn, tile_env, [read(tile_env, v) for v in eqn.invars])
    return read(tile_env, jaxpr.outvars[0])

  return pure, (consts, params)


def _evaluate(eqn, env, values):
  """One equation of a jaxpr, its results written to env (what jax.core.eval_jaxpr does)."""
  results = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
  env.update(zip(eqn.outvars, results if eqn.primitive.multiple_results else [results]))


class Geometry:
  """The static description of one attention call (hashable: it is a nondiff argument)."""

  def __init__(self, **fields):
    self.__dict__.update(fields)
    self._key = tuple(sorted((k, v if k != "bias" else id(v)) for k, v in fields.items()))

  def replace(self, **changes):
    """This geometry with some fields changed."""
    fields = {k: v for k, v in self.__dict__.items() if k != "_key"}
    return Geometry(**{**fields, **changes})

  def at_offset(self, offset):
    """This geometry with a causal offset known only when traced (q_offset), for use inside the
    kernel's trace; itself where there is none."""
    if offset is None:
      return self
    view = Geometry.__new__(Geometry)
    view.__dict__.update(self.__dict__, causal_offset=offset)
    return view

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, Geometry) and self._key == other._key
