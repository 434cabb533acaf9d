"""Absolute position embeddings added to the token embeddings: sinusoidal and learned."""
import jax
import jax.numpy as jnp
from flax import nnx

from lcx.positions.base import PositionConfig, PositionScheme, register


def sinusoidal_table(positions: jax.Array, dim: int) -> jax.Array:
  """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(same).

  Computed from the positions themselves, so there is no maximum length.
  """
  if dim % 2:
    raise ValueError(f"sinusoidal_table needs an even dim, got {dim}")
  inv_freq = 10000.0 ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)


@register("sinusoidal")
class Sinusoidal(PositionScheme):

  def __init__(self, cfg: PositionConfig, *, rngs):
    del rngs
    self.dim = cfg.d_model

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    super().validate(cfg, train_length)
    if cfg.d_model % 2:
      raise ValueError(f"config.model.d_model={cfg.d_model} must be even for sinusoidal")

  def embed(self, x_BLD, positions_BL):
    return x_BLD + sinusoidal_table(positions_BL, self.dim).astype(x_BLD.dtype)


@register("learned")
class Learned(PositionScheme):
  """A trained table of max_len positions; it has nothing to offer beyond them."""

  def __init__(self, cfg: PositionConfig, *, rngs: nnx.Rngs):
    self.max_len = cfg.max_len
    init = nnx.initializers.normal(stddev=1.0)
    self.table = nnx.Param(init(rngs.params(), (cfg.max_len, cfg.d_model), jnp.dtype(cfg.param_dtype)),
                           logical_axes=(None, "embed"))

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    super().validate(cfg, train_length)
    if cfg.max_len < train_length:
      raise ValueError(f"config.model.max_len={cfg.max_len} is shorter than the {train_length} "
                       "positions training reaches (config.data.seq_len, or "
                       "config.data.pose_target_len with PoSE); learned positions need max_len "
                       f">= {train_length}")

  def check_length(self, length):
    if length > self.max_len:
      raise ValueError(
          f"learned positions: a sequence of {length} tokens exceeds the table of model.max_len="
          f"{self.max_len} positions; learned positions allow lengths <= {self.max_len}")

  def embed(self, x_BLD, positions_BL):
    return x_BLD + jnp.take(self.table[...], positions_BL, axis=0).astype(x_BLD.dtype)
