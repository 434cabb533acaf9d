"""ALiBi (Press et al., 2022): a per-head linear penalty on query-key distance."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from lcx.positions.base import PositionConfig, PositionScheme, register
from lcx.positions.bias import FIXED_LINEAR, LinearBias, linear_bias


def alibi_slopes(num_heads: int) -> jax.Array:
  """The paper's slopes: for n a power of two, 2^(-8/n), 2^(-16/n), ..., 2^(-8).

  Otherwise the slopes of the closest smaller power of two n', followed by every other slope
  of 2n' heads until there are num_heads.
  """
  if num_heads < 1:
    raise ValueError(f"alibi_slopes needs at least one head, got {num_heads}")

  def geometric(n):
    return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

  n = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = geometric(n)
  if n < num_heads:
    slopes += geometric(2 * n)[0::2][: num_heads - n]
  return jnp.asarray(np.array(slopes, dtype=np.float32))


alibi_bias = linear_bias  # -slope * |q - k|, (B, H, Q, K)


@register("alibi")
class Alibi(PositionScheme):
  BIAS = FIXED_LINEAR  # a kernel may compute it from the slopes

  def __init__(self, cfg: PositionConfig, *, rngs):
    del rngs
    self.n_heads = cfg.n_heads

  def bias(self, q_positions_BQ, k_positions_BK, layer):
    return self.bias_fn(layer)(q_positions_BQ, k_positions_BK)

  def bias_fn(self, layer=0):
    del layer  # one set of slopes for every layer
    return LinearBias(alibi_slopes(self.n_heads))
