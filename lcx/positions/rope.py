"""Rotary position embedding (Su et al., 2021) with partial rotary and both pair layouts."""
import jax
import jax.numpy as jnp

from lcx.positions.base import PositionConfig, PositionScheme, register


def rope_inverse_frequencies(rotary_dim: int, base: float = 10000.0) -> jax.Array:
  """theta_i = base^(-2i / rotary_dim) for i in [0, rotary_dim / 2)."""
  if rotary_dim % 2:
    raise ValueError(f"RoPE needs an even number of rotary dims, got {rotary_dim}")
  return base ** (-jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)


def rotary_dim(head_dim: int, fraction: float) -> int:
  """Dims that rotate: the fraction of head_dim, rounded down to an even number."""
  return int(head_dim * fraction) // 2 * 2


def apply_rope(x_BLHK: jax.Array, positions_BL: jax.Array, inv_freq: jax.Array,
               layout: str = "half") -> jax.Array:
  """Rotates the first 2 * len(inv_freq) dims of each head by angle position * inv_freq.

  layout "half" pairs dim i with i + r/2 (GPT-NeoX, Llama); "interleaved" pairs 2i with 2i + 1
  (the original RoFormer / GPT-J). Dims past the rotary part pass through unchanged.
  """
  r = 2 * inv_freq.shape[0]
  angles_BLF = positions_BL.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(angles_BLF)[:, :, None, :]
  sin = jnp.sin(angles_BLF)[:, :, None, :]
  rot, rest = x_BLHK[..., :r].astype(jnp.float32), x_BLHK[..., r:]
  if layout == "half":
    a, b = rot[..., : r // 2], rot[..., r // 2:]
    out = jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
  elif layout == "interleaved":
    a, b = rot[..., 0::2], rot[..., 1::2]
    out = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(rot.shape)
  else:
    raise ValueError(f"model.rope.layout={layout!r} is unknown; allowed: half, interleaved")
  return jnp.concatenate([out.astype(x_BLHK.dtype), rest], axis=-1)


@register("rope")
class Rope(PositionScheme):

  def __init__(self, cfg: PositionConfig, *, rngs):
    del rngs
    self.layout = cfg.rope.layout
    self.rotary_dim = rotary_dim(cfg.head_dim, cfg.rope.fraction)
    self.base = cfg.rope.base

  def rotate(self, q_BLHK, k_BLHK, positions_BL):
    inv_freq = rope_inverse_frequencies(self.rotary_dim, self.base)
    return (apply_rope(q_BLHK, positions_BL, inv_freq, self.layout),
            apply_rope(k_BLHK, positions_BL, inv_freq, self.layout))
