"""ALiBi (Press et al., 2022): a per-head linear penalty on query-key distance."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lcx.positions.base import PositionConfig, PositionScheme, register


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


def alibi_bias(q_positions_BQ, k_positions_BK, slopes_H) -> jax.Array:
  """-slope * |q - k| as (B, H, Q, K) float32; under a causal mask that is -slope * (q - k)."""
  distance = jnp.abs(q_positions_BQ[:, :, None] - k_positions_BK[:, None, :]).astype(jnp.float32)
  return -slopes_H[None, :, None, None] * distance[:, None, :, :]


@dataclasses.dataclass(frozen=True, eq=False)
class AlibiBias:
  """ALiBi's bias as the attention kernels take it: callable like any scheme's bias, and with its
  slopes in the open, so a kernel that knows the form (lcx.native) computes it in registers."""
  slopes_H: jax.Array

  def __call__(self, q_positions_BQ, k_positions_BK):
    return alibi_bias(q_positions_BQ, k_positions_BK, self.slopes_H)


@register("alibi")
class Alibi(PositionScheme):
  BIAS_FORM = "alibi"  # see lcx.positions.bias_form

  def __init__(self, cfg: PositionConfig, *, rngs):
    del rngs
    self.n_heads = cfg.n_heads

  def bias(self, q_positions_BQ, k_positions_BK):
    return self.bias_fn()(q_positions_BQ, k_positions_BK)

  def bias_fn(self):
    return AlibiBias(alibi_slopes(self.n_heads))
