"""FIRE (Li et al., 2023): functional interpolation for relative positions.

The bias of query i and key j <= i is a small MLP of the normalized, log-transformed distance,

  b(i, j) = f( psi(i - j) / psi(max(L, i)) ),   psi(x) = log(c x + 1),

with f: 1 -> hidden (ReLU) -> heads, c and the threshold L learned. The normalizer makes the input
lie in [0, 1] at every length (progressive interpolation): past the threshold a longer context is
squeezed into the range training saw, instead of reaching inputs f never met. As in the paper,
c starts at 0.1 and L at 512 tokens (learned as a multiplier of that start, so it moves at the
rate of the other parameters), and there is one f, c and L per layer unless `shared`.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lcx.positions.base import PositionConfig, PositionScheme, register
from lcx.positions.bias import LEARNED_FUNCTION

_EPS = 1e-6  # keeps the normalizer away from 0 (c -> 0)


@dataclasses.dataclass(frozen=True)
class FireOptions:
  hidden: int = 32  # width of f's hidden layer
  shared: bool = False  # one f, c and L for all layers (the paper: one per layer)
  c: float = 0.1  # psi's initial c
  threshold: float = 512.0  # the initial L, in tokens


def fire_input(q_positions_BQ, k_positions_BK, c, threshold) -> jax.Array:
  """psi(i - j) / psi(max(L, i)), (B, Q, K) float32; in [0, 1] for every key j <= i."""
  q = q_positions_BQ.astype(jnp.float32)
  distance = jnp.abs(q[:, :, None] - k_positions_BK[:, None, :].astype(jnp.float32))
  psi = lambda x: jnp.log(jnp.abs(c) * x + 1.0)
  return psi(distance) / (psi(jnp.maximum(q, jnp.abs(threshold)))[:, :, None] + _EPS)


def fire_mlp(x_BQK, w1_F, b1_F, w2_FH, b2_H) -> jax.Array:
  """f applied to every input: (B, Q, K) -> (B, H, Q, K) float32."""
  hidden_BQKF = jax.nn.relu(x_BQK[..., None] * w1_F + b1_F)
  return (jnp.einsum("bqkf,fh->bhqk", hidden_BQKF, w2_FH) + b2_H[None, :, None, None])


@register("fire")
class Fire(PositionScheme):
  Options = FireOptions
  BIAS = LEARNED_FUNCTION

  def __init__(self, cfg: PositionConfig, *, rngs: nnx.Rngs):
    o = cfg.options
    self.shared, self.initial_threshold = o.shared, float(o.threshold)
    n, F, H, dtype = 1 if o.shared else cfg.n_layers, o.hidden, cfg.n_heads, cfg.param_dtype

    def uniform(shape, fan_in, axes):  # a torch Linear's initialization, as the paper's code
      bound = 1.0 / math.sqrt(fan_in)
      return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.dtype(dtype), -bound, bound),
                       logical_axes=axes)

    self.w1, self.b1 = uniform((n, F), 1, (None, None)), uniform((n, F), 1, (None, None))
    self.w2, self.b2 = uniform((n, F, H), F, (None, None, "heads")), uniform((n, H), F,
                                                                             (None, "heads"))
    self.c = nnx.Param(jnp.full((n,), o.c, jnp.dtype(dtype)), logical_axes=(None,))
    self.threshold_scale = nnx.Param(jnp.ones((n,), jnp.dtype(dtype)), logical_axes=(None,))

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    super().validate(cfg, train_length)
    o = cfg.options
    if isinstance(o.hidden, bool) or not isinstance(o.hidden, int) or o.hidden < 1:
      raise ValueError(f"config.model.fire.hidden={o.hidden!r} must be a positive integer")
    if not isinstance(o.shared, bool):
      raise ValueError(f"config.model.fire.shared={o.shared!r} must be True or False")
    if not o.c > 0:
      raise ValueError(f"config.model.fire.c={o.c!r} must be positive")
    if not o.threshold > 0:
      raise ValueError(f"config.model.fire.threshold={o.threshold!r} must be positive (tokens)")

  def bias(self, q_positions_BQ, k_positions_BK, layer):
    i = 0 if self.shared else layer
    at = lambda p: p[...][i].astype(jnp.float32)
    x_BQK = fire_input(q_positions_BQ, k_positions_BK, at(self.c),
                       at(self.threshold_scale) * self.initial_threshold)
    return fire_mlp(x_BQK, at(self.w1), at(self.b1), at(self.w2), at(self.b2))

  def tile_bias(self, q_positions_BQ, k_positions_BK, layer):
    """f as a sum over its hidden units, relu(w1_f x + b1_f) * w2_f: elementwise work on the
    tile, no matmul over its axes (the slices of the weights are taken outside a kernel)."""
    i = 0 if self.shared else layer
    at = lambda p: p[...][i].astype(jnp.float32)
    x_B1QK = fire_input(q_positions_BQ, k_positions_BK, at(self.c),
                        at(self.threshold_scale) * self.initial_threshold)[:, None]
    w1, b1, w2, b2 = at(self.w1), at(self.b1), at(self.w2), at(self.b2)
    return b2[None, :, None, None] + sum(
        jax.nn.relu(x_B1QK * w1[f] + b1[f]) * w2[f][None, :, None, None]
        for f in range(w1.shape[0]))
