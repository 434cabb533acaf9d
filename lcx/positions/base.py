"""The position-scheme interface and its registry.

A scheme may act at three places, and the model calls all three unconditionally:
  embed(x_BLD, positions_BL)          add to the token embeddings (sinusoidal, learned)
  rotate(q_BLHK, k_BLHK, positions_BL, length) transform queries and keys (RoPE and its variants)
  bias(q_positions_BQ, k_positions_BK, layer) additive attention-logit bias, (B, H, Q, K)
`bias` is a pure function of positions so that a blockwise kernel can call it per tile; the
kernels receive it as a lcx.positions.bias.Bias (`bias_fn`), which says what it is. A bias made
from the data instead (BiasKind.rows, the Forgetting Transformer's) comes from a fourth hook:
  log_gates(x_BLD, layer)             (B, L, H) log forget gates of the layer's input, which
                                      lcx.positions.bias.gate_row_bias turns into the kernels'
                                      row_bias (None for every other scheme)
"""
import ast
import dataclasses
import functools
from typing import Any

import jax
from flax import nnx

from lcx.positions.bias import Bias, BiasKind, FunctionBias
from lcx.registry import Registry


@dataclasses.dataclass(frozen=True)
class PositionConfig:
  """What a position scheme may know about the model."""
  d_model: int
  n_heads: int
  head_dim: int
  max_len: int
  n_layers: int = 1
  param_dtype: str = "float32"
  options: Any = None  # the scheme's own Options (see lcx.registry), its defaults where None


class PositionScheme(nnx.Module):
  """Identity at every hook; a scheme overrides the hooks it uses.

  A scheme with options of its own names them as `Options` (the convention in lcx.registry).
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

  def log_gates(self, x_BLD: jax.Array, layer) -> jax.Array | None:
    """(B, L, H) float32 log forget gates of the attention layer's input, for a scheme whose bias
    is made from the data (BIAS.rows); None for every other."""
    del x_BLD, layer
    return None

  def bias_fn(self, layer=0) -> Bias | None:
    """What the attention kernels of `layer` are handed: None for a scheme without a bias of
    positions (none, or one made from the data: log_gates)."""
    if self.BIAS is None or self.BIAS.rows:
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
    cannot work with this model config at this training length (config resolution calls it, with
    cfg.options filled in)."""
    del cfg, train_length


REGISTRY: Registry[PositionScheme] = Registry("position scheme", "model.position")
register = REGISTRY.register
option_types = REGISTRY.option_types


def available() -> tuple[str, ...]:
  return REGISTRY.names()


def bias_kind(name: str) -> BiasKind | None:
  """What the registered scheme's attention-logit bias is (None: it has none), which a kernel
  must be able to take."""
  return REGISTRY.lookup(name).BIAS


def validate(name: str, cfg: PositionConfig, train_length: int) -> None:
  """The registered scheme's checks of its options and of a model config (see
  PositionScheme.validate)."""
  cfg = REGISTRY.with_options(name, cfg)
  if hasattr(cfg.options, "check"):
    cfg.options.check()
  REGISTRY.lookup(name).validate(cfg, train_length)


def check_options(name: str | tuple[str, ...], sections: dict[str, object]) -> None:
  """Every scheme's options as the config holds them, with `name` the chosen scheme or schemes
  (see lcx.registry: each section's check, and no scheme-only field set for another scheme)."""
  REGISTRY.check_sections(name, sections)


LAYERS_FIELD = "model.position_layers"


def embeds(name: str) -> bool:
  """Whether the scheme adds to the token embeddings (learned, sinusoidal): a model-wide act,
  which a per-layer pattern cannot place in some layers only."""
  return REGISTRY.lookup(name).embed is not PositionScheme.embed


def _as_type_of(default, value):
  """value as the type of the option's default (an int for a float is fine), None if it is not
  one."""
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, bool):
    return value if isinstance(value, bool) else None
  if isinstance(default, float):
    return float(value) if number else None
  if isinstance(default, int):
    return value if number and value == int(value) and isinstance(value, int) else None
  if isinstance(default, str):
    return value if isinstance(value, str) else None
  return value


def parse_layer(entry: str, sections: dict[str, object]) -> tuple[str, object]:
  """One entry of a per-layer pattern, 'scheme' or 'scheme:field=value,...' (e.g.
  'rope:base=1000000', Gemma 3's global layers), as (name, Options): the scheme's model.<scheme>
  section (`sections`, name -> Options) with the entry's fields over it. ValueError, one line,
  for an entry that is not a scheme, a scheme that embeds, or a field it does not have."""
  name, _, fields = str(entry).partition(":")
  name = name.strip()
  allowed = ", ".join(n for n in available() if not embeds(n))
  if name not in REGISTRY.names() or embeds(name):
    what = "adds to the embeddings, for every layer at once" if name in REGISTRY.names() else (
        "is not a position scheme")
    raise ValueError(f"{LAYERS_FIELD} entry {entry!r}: {name!r} {what}; allowed: {allowed}, "
                     "each optionally with :field=value,... of its options")
  options = sections.get(name)
  if not fields.strip():
    return name, options
  if options is None:
    raise ValueError(f"{LAYERS_FIELD} entry {entry!r}: the scheme {name!r} has no options")
  changes = {}
  for item in fields.split(","):
    field, eq, text = item.partition("=")
    field = field.strip()
    names = [f.name for f in dataclasses.fields(options)]
    if not eq or field not in names:
      raise ValueError(f"{LAYERS_FIELD} entry {entry!r}: {item.strip()!r} is not field=value "
                       f"of model.{name}; its fields: {', '.join(names)}")
    default = getattr(options, field)
    try:
      value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      value = text.strip()  # a bare word: a string option (scaling=yarn)
    changes[field] = _as_type_of(default, value)
    if changes[field] is None:
      raise ValueError(f"{LAYERS_FIELD} entry {entry!r}: {field}={text.strip()!r} is not a "
                       f"{type(default).__name__}")
  return name, dataclasses.replace(options, **changes)  # checked with the model (validate)


def make(name: str, cfg: PositionConfig, *, rngs: nnx.Rngs) -> PositionScheme:
  return REGISTRY.lookup(name)(REGISTRY.with_options(name, cfg), rngs=rngs)


@register("none")
class NoPosition(PositionScheme):
  """NoPE: causal attention alone carries order."""
