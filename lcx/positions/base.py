"""The position-scheme interface and its registry.

A scheme may act at three places, and the model calls all three unconditionally:
  embed(x_BLD, positions_BL)          add to the token embeddings (sinusoidal, learned)
  rotate(q_BLHK, k_BLHK, positions_BL, length) transform queries and keys (RoPE and its variants)
  bias(q_positions_BQ, k_positions_BK, layer) additive attention-logit bias, (B, H, Q, K)
`bias` is a pure function of positions so that a blockwise kernel can call it per tile; the
kernels receive it as a lcx.positions.bias.Bias (`bias_fn`), which says what it is.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
from flax import nnx

from lcx.positions.bias import Bias, BiasKind, FunctionBias


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  base: float = 10000.0
  fraction: float = 1.0  # share of each head's dims that rotate (GPT-NeoX partial rotary)
  layout: str = "half"  # "half": pairs (i, i + d/2); "interleaved": pairs (2i, 2i + 1)
  # Context extension (lcx.positions.rope_scaling): method, factor s, and the training length.
  scaling: str = "none"
  factor: float = 1.0
  original_length: int = 0
  beta_fast: float = 32.0  # YaRN: dims turning more than this often in original_length keep theta
  beta_slow: float = 1.0  # YaRN: dims turning less than this are fully interpolated
  yarn_ramp: str = "dims"  # YaRN: "dims" (the reference code's ramp) or "turns" (the paper's)
  keep: float = 1.0  # p-RoPE: the share of rotary pairs that keep their frequency (the fastest)


@dataclasses.dataclass(frozen=True)
class PositionConfig:
  """What a position scheme may know about the model."""
  d_model: int
  n_heads: int
  head_dim: int
  max_len: int
  n_layers: int = 1
  param_dtype: str = "float32"
  rope: RopeConfig = RopeConfig()
  options: Any = None  # the scheme's own Options (see PositionScheme.Options), or None


class PositionScheme(nnx.Module):
  """Identity at every hook; a scheme overrides the hooks it uses.

  A scheme with options of its own names a frozen dataclass of them, with their defaults, as
  `Options`: the config then has a section model.<scheme name> with those fields, and the scheme
  receives them as cfg.options (its defaults when built without a config).
  A scheme with a bias says what it is in `BIAS` (learned or fixed; a closed form a kernel may
  compute itself), which kernels read before they are chosen.
  """
  Options: type | None = None
  BIAS: BiasKind | None = None

  def __init__(self, cfg: PositionConfig, *, rngs: nnx.Rngs):
    del cfg, rngs

  def embed(self, x_BLD: jax.Array, positions_BL: jax.Array) -> jax.Array:
    del positions_BL
    return x_BLD

  def rotate(self, q_BLHK, k_BLHK, positions_BL, length: int | None = None):
    """`length`: the context the tokens belong to (default: L). A cache extended a few tokens at
    a time passes its whole window, so length-dependent schemes see what a full forward sees."""
    del positions_BL, length
    return q_BLHK, k_BLHK

  def bias(self, q_positions_BQ, k_positions_BK, layer) -> jax.Array:
    """(B or 1, H, Q, K) float32 for a scheme whose BIAS is set. `layer`: the attention layer's
    index (an int, or a traced scalar when the layers run as a scan), for per-layer parameters."""
    raise NotImplementedError(f"{type(self).__name__} sets BIAS but has no bias()")

  def tile_bias(self, q_positions_BQ, k_positions_BK, layer) -> jax.Array:
    """The same bias as `bias`, written with what Pallas lowers in a GPU or TPU kernel (one tile's
    positions at a time): elementwise work, broadcasts and reductions, no gathers and no matmul
    over more than two axes. Work on parameters alone (a layer's slice, a row of a table) is
    done outside the kernel, once (lcx.attention.tiles hoists it). By default `bias` itself."""
    return self.bias(q_positions_BQ, k_positions_BK, layer)

  def bias_fn(self, layer=0) -> Bias | None:
    """What the attention kernels of `layer` are handed: None for a scheme without a bias."""
    if self.BIAS is None:
      return None
    tile = (None if type(self).tile_bias is PositionScheme.tile_bias
            else functools.partial(self.tile_bias, layer=layer))
    return FunctionBias(functools.partial(self.bias, layer=layer), self.BIAS, tile_fn=tile)

  def check_length(self, length: int) -> None:
    """Raise ValueError if the scheme cannot represent sequences of `length` tokens."""
    del length

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    """Raise ValueError, one line naming the config field and what it allows, if the scheme
    cannot work with this model config at this training length (config resolution calls it; a
    scheme with options checks them here). The base: model.rope's values are valid (a typo is
    refused even where the option has no effect), and RoPE's context extension and p-RoPE's
    keep are RoPE's."""
    del train_length
    from lcx.positions.rope import check_options  # rope.py builds on this module
    check_options(cfg.rope)
    name = next(k for k, v in _REGISTRY.items() if v is cls)
    if cfg.rope.scaling != "none":
      raise ValueError(f"config.model.rope.scaling={cfg.rope.scaling!r} needs "
                       f"config.model.position='rope', not {name!r}; allowed with {name!r}: none")
    if cfg.rope.keep != 1.0:
      raise ValueError(f"config.model.rope.keep={cfg.rope.keep!r} (p-RoPE) needs "
                       f"config.model.position='rope', not {name!r}; allowed with {name!r}: 1.0")


_REGISTRY: dict[str, type[PositionScheme]] = {}


def register(name: str) -> Callable[[type[PositionScheme]], type[PositionScheme]]:
  def add(cls):
    if name in _REGISTRY:
      raise ValueError(f"position scheme {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls
  return add


def available() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def bias_kind(name: str) -> BiasKind | None:
  """What the registered scheme's attention-logit bias is (None: it has none), which a kernel
  must be able to take."""
  if name not in _REGISTRY:
    raise ValueError(f"model.position={name!r} is unknown; allowed: {', '.join(available())}")
  return _REGISTRY[name].BIAS


def option_types() -> dict[str, type]:
  """Each registered scheme that has options of its own: name -> its Options dataclass."""
  return {name: cls.Options for name, cls in sorted(_REGISTRY.items()) if cls.Options is not None}


def validate(name: str, cfg: PositionConfig, train_length: int) -> None:
  """The registered scheme's checks of a model config (see PositionScheme.validate)."""
  if name not in _REGISTRY:
    raise ValueError(f"model.position={name!r} is unknown; allowed: {', '.join(available())}")
  _REGISTRY[name].validate(cfg, train_length)


def make(name: str, cfg: PositionConfig, *, rngs: nnx.Rngs) -> PositionScheme:
  if name not in _REGISTRY:
    raise ValueError(f"model.position={name!r} is unknown; allowed: {', '.join(available())}")
  return _REGISTRY[name](cfg, rngs=rngs)


@register("none")
class NoPosition(PositionScheme):
  """NoPE: causal attention alone carries order."""
