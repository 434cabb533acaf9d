"""xPos (Sun et al., 2022): RoPE with an exponential decay of the logits with distance.

Rotary pair i (of d/2) gets zeta_i = (2i/d + 0.4) / 1.4 in (0.29, 1): queries at position n are
scaled by zeta_i^(n / gamma) and keys at m by zeta_i^(-m / gamma), so the pair's contribution to a
logit is multiplied by zeta_i^((n - m) / gamma): fast-turning pairs decay strongly with distance,
slow ones hardly. Only n - m matters, so positions are measured from the middle of the context
(as the paper's code does): the exponents stay within +-length / (2 gamma), finite in float32 and
bfloat16 up to well past 32K tokens, where zeta^(n / gamma) itself would overflow. A cache passes
its whole window as the length, so decoding scales exactly as the full forward. The scale rides on
RoPE's cos and sin, so xPos costs what RoPE costs.
"""
import dataclasses

import jax
import jax.numpy as jnp

from lcx.positions.base import PositionConfig, PositionScheme, register
from lcx.positions.rope import (LAYOUTS, check_rotary_pair, rope_inverse_frequencies,
                                rotary_cos_sin, rotary_dim, rotate_by)


@dataclasses.dataclass(frozen=True)
class XposOptions:
  """model.xpos: the decay, and the rotation it rides on (as model.rope's fields of those names)."""
  gamma: float = 512.0  # the decay's length scale, in tokens (the paper's scale_base)
  base: float = 10000.0
  fraction: float = 1.0
  layout: str = "half"

  def check(self) -> None:
    checks = (
        (self.gamma > 0, f"config.model.xpos.gamma={self.gamma!r} must be positive (tokens)"),
        (self.base > 0, f"config.model.xpos.base={self.base!r} must be positive"),
        (0 < self.fraction <= 1, f"config.model.xpos.fraction={self.fraction!r} must be in (0, 1]"),
        (self.layout in LAYOUTS, f"config.model.xpos.layout={self.layout!r} is not allowed; "
                                 f"allowed: {', '.join(LAYOUTS)}"),
    )
    for ok, problem in checks:
      if not ok:
        raise ValueError(problem)


def xpos_zeta(rotary_dim: int) -> jax.Array:
  """zeta_i = (2i + 0.4 d) / (1.4 d) for each rotary pair i."""
  return (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) + 0.4 * rotary_dim) / (1.4 * rotary_dim)


def xpos_scales(positions_BL, zeta_F, gamma: float, center: int) -> jax.Array:
  """zeta^((n - center) / gamma), (B, L, F) float32: the queries' scale (keys take its inverse)."""
  exponent_BL = (positions_BL.astype(jnp.float32) - center) / gamma
  return jnp.exp(exponent_BL[..., None] * jnp.log(zeta_F))


@register("xpos")
class Xpos(PositionScheme):
  Options = XposOptions

  def __init__(self, cfg: PositionConfig, *, rngs):
    del rngs
    self.options = cfg.options
    self.gamma = float(cfg.options.gamma)
    self.rotary_dim = rotary_dim(cfg.head_dim, cfg.options.fraction)

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    del train_length
    check_rotary_pair("xpos", cfg.head_dim, cfg.options.fraction)

  def rotate(self, q_BLHK, k_BLHK, positions_BL, length=None):
    inv_freq = rope_inverse_frequencies(self.rotary_dim, self.options.base)
    cos, sin = rotary_cos_sin(positions_BL, inv_freq)
    scale = xpos_scales(positions_BL, xpos_zeta(self.rotary_dim), self.gamma,
                        (length or positions_BL.shape[1]) // 2)
    return (rotate_by(q_BLHK, cos * scale, sin * scale, self.options.layout),
            rotate_by(k_BLHK, cos / scale, sin / scale, self.options.layout))
