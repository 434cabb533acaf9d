"""KERPLE (Chi et al., 2022): a learned, conditionally positive definite kernel of the distance,
added to the attention logits, with two positive parameters per head and layer:

  log    -r1 log(1 + r2 |i - j|)
  power  -r1 |i - j|^r2, r2 in (0, 2]

As in the reference code, r1 and r2 start uniform (log: r1 in (0, 2), r2 in (0, 1); power: r1 in
(0, 1), r2 in (0, 2)) and are kept at least 0.01 (r2 of power at most 2). The reference projects
the parameters after each optimizer step; here the bias uses the clipped value and the gradient
passes the clip unchanged (straight through), so a parameter at its bound still learns and the
optimizer stays generic.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lcx.positions.base import PositionConfig, PositionScheme, register
from lcx.positions.bias import LEARNED_FUNCTION

KINDS = ("log", "power")
MIN_PARAM = 1e-2  # the reference code's floor on r1 and r2
MAX_POWER = 2.0  # power's r2: the kernel stays conditionally positive definite up to 2


@dataclasses.dataclass(frozen=True)
class KerpleOptions:
  kind: str = "log"  # "log": -r1 log(1 + r2 |i-j|); "power": -r1 |i-j|^r2


def kerple_bias(q_positions_BQ, k_positions_BK, r1_H, r2_H, kind: str) -> jax.Array:
  """(B, H, Q, K) float32 for parameters already in range."""
  distance = jnp.abs(q_positions_BQ[:, None, :, None] - k_positions_BK[:, None, None, :])
  distance = distance.astype(jnp.float32)
  r1, r2 = r1_H[None, :, None, None], r2_H[None, :, None, None]
  if kind == "log":
    return -r1 * jnp.log1p(r2 * distance)
  if kind == "power":
    # 0^r2 is 0; its r2-gradient, 0 * log 0, would be NaN, so distance 0 takes base 1 and is zeroed
    nonzero = distance > 0
    return -r1 * jnp.where(nonzero, jnp.where(nonzero, distance, 1.0) ** r2, 0.0)
  raise ValueError(f"config.model.kerple.kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}")


def _clip_straight_through(x, low, high=None):
  return x + jax.lax.stop_gradient(jnp.clip(x, low, high) - x)


@register("kerple")
class Kerple(PositionScheme):
  Options = KerpleOptions
  BIAS = LEARNED_FUNCTION

  def __init__(self, cfg: PositionConfig, *, rngs: nnx.Rngs):
    self.kind = cfg.options.kind
    r1_scale, r2_scale = (2.0, 1.0) if self.kind == "log" else (1.0, 2.0)
    shape, dtype = (cfg.n_layers, cfg.n_heads), jnp.dtype(cfg.param_dtype)
    uniform = lambda scale: nnx.Param(scale * jax.random.uniform(rngs.params(), shape, dtype),
                                      logical_axes=(None, "heads"))
    self.r1, self.r2 = uniform(r1_scale), uniform(r2_scale)

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    super().validate(cfg, train_length)
    kind = cfg.options.kind
    if kind not in KINDS:
      raise ValueError(f"config.model.kerple.kind={kind!r} is not allowed; allowed: "
                       f"{', '.join(KINDS)}")

  def parameters(self, layer) -> tuple[jax.Array, jax.Array]:
    """(r1, r2) of `layer` as the bias uses them, each (H,) float32."""
    r1 = _clip_straight_through(self.r1[...][layer].astype(jnp.float32), MIN_PARAM)
    r2 = _clip_straight_through(self.r2[...][layer].astype(jnp.float32), MIN_PARAM,
                                MAX_POWER if self.kind == "power" else None)
    return r1, r2

  def bias(self, q_positions_BQ, k_positions_BK, layer):
    return kerple_bias(q_positions_BQ, k_positions_BK, *self.parameters(layer), self.kind)
