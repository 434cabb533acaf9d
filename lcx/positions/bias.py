"""A position scheme's attention-logit bias as the kernels take it.

Kernels never test scheme names: they ask the bias what it is.
  - `BiasKind` is known from the scheme's class alone (config resolution, kernel choice): whether
    the bias has learned parameters (their gradient must reach them, so a kernel that cannot
    return it refuses the bias at start) and whether it has a closed form a kernel may compute
    itself instead of calling the function.
  - `Bias` is the callable a model hands its attention kernel: bias(q_positions_BQ,
    k_positions_BK) -> (B or 1, H, Q, K) float32, carrying its kind; `LinearBias` also has its
    slopes in the open (ALiBi's form).
  - A bias made from the data (`BiasKind.rows`: the Forgetting Transformer's) is no function of
    positions: the scheme makes per-token log forget gates from the layer's input
    (PositionScheme.log_gates), and `gate_row_bias` turns them into the two per-row vectors the
    tiled kernels take as `row_bias` (lcx.attention).
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

LINEAR = "linear"  # -slope_h * |q - k|: per-head slopes, fixed
CLOSED_FORMS = (LINEAR,)


@dataclasses.dataclass(frozen=True)
class BiasKind:
  learned: bool  # computed from trained parameters
  closed_form: str | None = None  # one of CLOSED_FORMS, or None: only the function
  # made from the layer's input as per-token vectors (PositionScheme.log_gates), not from
  # positions: only kernels that take `row_bias` take it
  rows: bool = False

  def __post_init__(self):
    if self.closed_form not in (None, *CLOSED_FORMS):
      raise ValueError(f"bias closed_form={self.closed_form!r} is unknown; allowed: None, "
                       f"{', '.join(CLOSED_FORMS)}")


FIXED_FUNCTION = BiasKind(learned=False)
LEARNED_FUNCTION = BiasKind(learned=True)
FIXED_LINEAR = BiasKind(learned=False, closed_form=LINEAR)
LEARNED_ROWS = BiasKind(learned=True, rows=True)


class Bias:
  """Callable bias with its kind; subclasses say how it is computed."""
  kind: BiasKind

  def __call__(self, q_positions_BQ: jax.Array, k_positions_BK: jax.Array) -> jax.Array:
    raise NotImplementedError

  def per_tile(self) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The same function as a device kernel evaluates it on a tile (see
    PositionScheme.tile_bias); by default the bias itself."""
    return self


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionBias(Bias):
  """Any pure function of positions (it may close over the scheme's parameters), and optionally
  the same function in the form a device kernel lowers."""
  fn: Callable[[jax.Array, jax.Array], jax.Array]
  kind: BiasKind
  tile_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None

  def __call__(self, q_positions_BQ, k_positions_BK):
    return self.fn(q_positions_BQ, k_positions_BK)

  def per_tile(self):
    return self.tile_fn or self.fn


def linear_bias(q_positions_BQ, k_positions_BK, slopes_H) -> jax.Array:
  """-slope * |q - k| as (B, H, Q, K) float32; under a causal mask that is -slope * (q - k)."""
  distance = jnp.abs(q_positions_BQ[:, :, None] - k_positions_BK[:, None, :]).astype(jnp.float32)
  return -slopes_H[None, :, None, None] * distance[:, None, :, :]


@dataclasses.dataclass(frozen=True, eq=False)
class LinearBias(Bias):
  """-slope_h * |q - k| with fixed per-head slopes: a kernel that knows the form
  (lcx.attention.native) computes it in registers from the slopes."""
  slopes_H: jax.Array
  kind: BiasKind = FIXED_LINEAR

  def __call__(self, q_positions_BQ, k_positions_BK):
    return linear_bias(q_positions_BQ, k_positions_BK, self.slopes_H)


def document_cumsum(x_BLH, segment_ids_BL) -> jax.Array:
  """The cumulative sum of x along L, restarting at each document (where the segment id changes):
  an associative scan whose sums never cross a boundary, so a document's values stay as small as
  that document makes them however long the row."""
  restart_BL = jnp.concatenate([jnp.ones_like(segment_ids_BL[:, :1], bool),
                                segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]], axis=1)

  def combine(left, right):
    (x_left, restart_left), (x_right, restart_right) = left, right
    return (x_right + jnp.where(restart_right[..., None], 0.0, x_left),
            restart_left | restart_right)

  return jax.lax.associative_scan(combine, (x_BLH, restart_BL), axis=1)[0]


def gate_row_bias(log_gates_BKH, segment_ids_BK, q_len: int) -> tuple[jax.Array, jax.Array]:
  """The Forgetting Transformer's bias as the kernels' row_bias (a_BHQ, b_BHK): with
  c = the per-document cumulative sum of the keys' log forget gates, the logit of (i, j) gets
  c_i - c_j, the sum of the gates after j up to i. The queries are the last q_len keys (a KV
  cache's or a memory's keys come first); float32. segment_ids_BK None: one document a row."""
  log_gates_BKH = log_gates_BKH.astype(jnp.float32)
  c_BKH = (jnp.cumsum(log_gates_BKH, axis=1) if segment_ids_BK is None
           else document_cumsum(log_gates_BKH, segment_ids_BK))
  c_BHK = c_BKH.transpose(0, 2, 1)
  return c_BHK[:, :, c_BHK.shape[2] - q_len:], c_BHK
