"""T5's relative position bias (Raffel et al., 2020), as a decoder uses it.

A learned scalar per head and distance bucket, added to the attention logits; one table of
buckets x heads shared by every layer, as in T5. Causal (unidirectional) buckets: the distance
n = q - k >= 0 has its own bucket below buckets // 2, then buckets grow logarithmically up to
max_distance, and every distance beyond shares the last bucket. So the bias is flat past
max_distance: what T5 bias extrapolates with.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lcx.positions.base import PositionConfig, PositionScheme, register
from lcx.positions.bias import LEARNED_FUNCTION


@dataclasses.dataclass(frozen=True)
class T5Options:
  buckets: int = 32  # distance buckets (half exact, half logarithmic)
  max_distance: int = 128  # where the logarithmic buckets end; farther shares the last bucket


def t5_buckets(distance: jax.Array, buckets: int, max_distance: int) -> jax.Array:
  """The bucket of each causal distance q - k (negative ones, future keys the mask hides, count
  as 0): n itself below buckets // 2, then
  buckets // 2 + floor(log(n / (buckets // 2)) / log(max_distance / (buckets // 2)) * (buckets -
  buckets // 2)), capped at buckets - 1."""
  n = jnp.maximum(distance, 0)
  exact = buckets // 2
  # log of at least 1 keeps the unused branch finite where n < exact
  ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
  far = exact + (ratio * (buckets - exact)).astype(jnp.int32)
  return jnp.where(n < exact, n, jnp.minimum(far, buckets - 1)).astype(jnp.int32)


@register("t5")
class T5Bias(PositionScheme):
  Options = T5Options
  BIAS = LEARNED_FUNCTION

  def __init__(self, cfg: PositionConfig, *, rngs: nnx.Rngs):
    options = cfg.options
    self.buckets, self.max_distance = options.buckets, options.max_distance
    init = nnx.initializers.normal(stddev=cfg.d_model ** -0.5)  # T5's initialization
    self.bias_table = nnx.Param(
        init(rngs.params(), (self.buckets, cfg.n_heads), jnp.dtype(cfg.param_dtype)),
        logical_axes=(None, "heads"))

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    super().validate(cfg, train_length)
    o = cfg.options
    if isinstance(o.buckets, bool) or not isinstance(o.buckets, int) or o.buckets < 2:
      raise ValueError(f"config.model.t5.buckets={o.buckets!r} must be an integer >= 2")
    if not o.max_distance > o.buckets // 2:
      raise ValueError(f"config.model.t5.max_distance={o.max_distance!r} must exceed "
                       f"buckets // 2 = {o.buckets // 2} (the exact buckets)")

  def bias(self, q_positions_BQ, k_positions_BK, layer):
    del layer  # one table shared by every layer, as in T5
    distance_BQK = q_positions_BQ[:, :, None] - k_positions_BK[:, None, :]
    bucket_BQK = t5_buckets(distance_BQK, self.buckets, self.max_distance)
    bias_BQKH = jnp.take(self.bias_table[...].astype(jnp.float32), bucket_BQK, axis=0)
    return bias_BQKH.transpose(0, 3, 1, 2)

  def tile_bias(self, q_positions_BQ, k_positions_BK, layer):
    """The lookup as a sum over buckets of (bucket == b) * row b: no gather. Each row is a
    slice of the table (taken outside a kernel), each term a compare and a multiply-add per
    score."""
    del layer
    distance_BQK = q_positions_BQ[:, :, None] - k_positions_BK[:, None, :]
    bucket_B1QK = t5_buckets(distance_BQK, self.buckets, self.max_distance)[:, None]
    table = self.bias_table[...].astype(jnp.float32)
    # A product, not a where: where would broadcast the tile to every head in the kernel.
    return sum((bucket_B1QK == b).astype(jnp.float32) * table[b][None, :, None, None]
               for b in range(self.buckets))
