"""Rotary position embedding (Su et al., 2021) with partial rotary, both pair layouts, and
context extension.

Context extension re-parameterizes the inverse frequencies and may add an attention temperature,
so it applies zero-shot to any RoPE checkpoint or during a fine-tune (`model.rope.scaling`):

  none         theta_i = base^(-2i/d)
  linear       Position Interpolation (Chen et al., 2023): positions / s, i.e. theta_i / s
  ntk          NTK-aware: base' = base * s^(d / (d - 2))
  dynamic_ntk  NTK-aware with s recomputed from the current length L:
               s_L = s * L / L_orig - (s - 1) when L > L_orig, else 1 (identity up to L_orig)
  longrope     LongRoPE (Ding et al., 2024): a rescale factor per rotary pair,
               theta'_i = theta_i / lambda_i, from rope.short_factor up to L_orig and from
               rope.long_factor past it (the tables found by a search; one per pair), and
               attention factor sqrt(1 + ln s / ln L_orig) on q and k (rope.attention_factor
               overrides it): transformers' _compute_longrope_parameters
  yarn         YaRN (Peng et al., 2023), NTK-by-parts: theta'_i = (1 - gamma_i) theta_i / s +
               gamma_i theta_i, gamma_i from 1 (dims that turn often over the original context:
               kept) to 0 (slow dims: interpolated), and attention temperature
               sqrt(1/t) = 0.1 ln(s) + 1, applied to the rotated dims of q and k. The ramp of
               gamma (rope.yarn_ramp):
                 dims   (default) linear in the pair index i between floor(i(beta_fast)) and
                        ceil(i(beta_slow)), where i(b) = d ln(L_orig / (2 pi b)) / (2 ln base) is
                        the index whose frequency turns b times over L_orig: what the YaRN
                        reference code, the models released with it and HF transformers compute;
                 turns  linear in the turns r_i = L_orig theta_i / (2 pi) themselves,
                        gamma_i = clip((r_i - beta_slow) / (beta_fast - beta_slow), 0, 1): the
                        paper's equation (its section 3.2). The two differ by up to ~65% in the
                        transition dims.
Here d is the rotary dimension and L_orig the training length (rope.original_length).

p-RoPE (Barbero et al., 2025; rope.keep = p) keeps the fastest p of the rotary pairs and sets the
frequency of the rest, the slowest, to zero: those dims carry no position (semantic channels that
no distance can rotate away). It applies after any scaling, so it composes with all of them.
"""
import dataclasses
import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from lcx.positions.base import PositionConfig, PositionScheme, register


@dataclasses.dataclass(frozen=True)
class RopeOptions:
  """model.rope."""
  base: float = 10000.0
  fraction: float = 1.0  # share of each head's dims that rotate (GPT-NeoX partial rotary)
  layout: str = "half"  # "half": pairs (i, i + d/2); "interleaved": pairs (2i, 2i + 1)
  # Context extension (see above): method, factor s, and the training length (0: data.seq_len).
  scaling: str = "none"
  factor: float = 1.0
  original_length: int = 0
  beta_fast: float = 32.0  # YaRN: dims turning more than this often in original_length keep theta
  beta_slow: float = 1.0  # YaRN: dims turning less than this are fully interpolated
  yarn_ramp: str = "dims"  # YaRN: "dims" (the reference code's ramp) or "turns" (the paper's)
  keep: float = 1.0  # p-RoPE: the share of rotary pairs that keep their frequency (the fastest)
  # LongRoPE: rescale factors per rotary pair up to original_length and past it (() the short
  # one: all 1), and its attention factor (0: sqrt(1 + ln factor / ln original_length)).
  short_factor: tuple = ()
  long_factor: tuple = ()
  attention_factor: float = 0.0

  # Set under another scheme these would do nothing: refused there (lcx.registry).
  SCHEME_ONLY: ClassVar[dict[str, str]] = {"base": "", "fraction": "", "layout": "",
                                           "scaling": "", "keep": " (p-RoPE)"}
  # What a fine-tune sets for itself (its context extension); the rest is the source run's.
  FINETUNE_OWN: ClassVar[tuple[str, ...]] = ("scaling", "factor", "original_length", "beta_fast",
                                             "beta_slow", "yarn_ramp", "short_factor",
                                             "long_factor", "attention_factor")

  def check(self) -> None:
    """One line naming the first field with a value it does not allow."""
    checks = (
        (self.layout in LAYOUTS, f"config.model.rope.layout={self.layout!r} is not allowed; "
                                 f"allowed: {', '.join(LAYOUTS)}"),
        (0 < self.fraction <= 1, f"config.model.rope.fraction={self.fraction!r} must be in (0, 1]"),
        (self.base > 0, f"config.model.rope.base={self.base!r} must be positive"),
        (self.scaling in SCALINGS, f"config.model.rope.scaling={self.scaling!r} is not allowed; "
                                   f"allowed: {', '.join(SCALINGS)}"),
        (self.factor >= 1, f"config.model.rope.factor={self.factor!r} must be >= 1"),
        (self.beta_fast > self.beta_slow > 0,
         f"config.model.rope.beta_fast={self.beta_fast} and beta_slow={self.beta_slow} must "
         "satisfy beta_fast > beta_slow > 0"),
        (self.yarn_ramp in YARN_RAMPS, f"config.model.rope.yarn_ramp={self.yarn_ramp!r} is not "
                                       f"allowed; allowed: {', '.join(YARN_RAMPS)}"),
        (0 <= self.keep <= 1, f"config.model.rope.keep={self.keep!r} (p-RoPE) must be in [0, 1]"),
        (self.original_length > 0, f"config.model.rope.original_length={self.original_length!r} "
                                   "must be a positive integer"),
        (self.attention_factor >= 0, f"config.model.rope.attention_factor="
                                     f"{self.attention_factor!r} must be >= 0 (0: LongRoPE's own)"),
        (all(f > 0 for f in (*self.short_factor, *self.long_factor)),
         "config.model.rope.short_factor and long_factor (LongRoPE) must be positive numbers"),
        (self.scaling != "longrope" or self.long_factor,
         "config.model.rope.scaling='longrope' needs config.model.rope.long_factor: one rescale "
         "factor per rotary pair (python -m lcx.longrope search finds them)"),
    )
    for ok, problem in checks:
      if not ok:
        raise ValueError(problem)


LAYOUTS = ("half", "interleaved")


def rope_inverse_frequencies(rotary_dim: int, base: float = 10000.0) -> jax.Array:
  """theta_i = base^(-2i / rotary_dim) for i in [0, rotary_dim / 2)."""
  if rotary_dim % 2:
    raise ValueError(f"RoPE needs an even number of rotary dims, got {rotary_dim}")
  return base ** (-jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)


def rotary_dim(head_dim: int, fraction: float) -> int:
  """Dims that rotate: the fraction of head_dim, rounded down to an even number."""
  return int(head_dim * fraction) // 2 * 2


def check_rotary_pair(section: str, head_dim: int, fraction: float) -> None:
  if rotary_dim(head_dim, fraction) < 2:
    raise ValueError(f"config.model.{section}.fraction={fraction} leaves no rotary pair in "
                     f"head_dim {head_dim}")


def rotary_cos_sin(positions_BL: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos and sin of position * inv_freq, each (B, L, len(inv_freq))."""
  if jax.default_backend() == "cpu" and jnp.issubdtype(positions_BL.dtype, jnp.integer):
    return _cos_sin_from_table(positions_BL, inv_freq)
  return _cos_sin(positions_BL, inv_freq)


def _cos_sin(positions_BL, inv_freq):
  angles_BLF = positions_BL.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles_BLF), jnp.sin(angles_BLF)


def _cos_sin_from_table(positions_BL, inv_freq):
  # XLA on CPU fuses cos and sin into each (B, L, H, K) loop that rotates q or k, so they are
  # recomputed for every head in the forward and again in the backward pass: about 4% of a train
  # step at L=1024 (benchmarks/README.md). A row of L tokens holds positions 0..L-1, so the values
  # come from a table of L rows, a load per element instead. Positions outside it (offsets chosen
  # by the caller) take the direct formula: cond runs one branch, where would run both.
  length = positions_BL.shape[1]

  def lookup(p_BL):
    cos_LF, sin_LF = _cos_sin(jnp.arange(length), inv_freq)
    return jnp.take(cos_LF, p_BL, axis=0), jnp.take(sin_LF, p_BL, axis=0)

  in_table = (jnp.min(positions_BL) >= 0) & (jnp.max(positions_BL) < length)
  return jax.lax.cond(in_table, lookup, lambda p_BL: _cos_sin(p_BL, inv_freq), positions_BL)


def rotate_by(x_BLHK: jax.Array, cos_BLF: jax.Array, sin_BLF: jax.Array, layout: str = "half",
              scale: float = 1.0) -> jax.Array:
  """Rotates the first 2F dims of each head by the angles whose cos and sin are given.

  layout "half" pairs dim i with i + F (GPT-NeoX, Llama); "interleaved" pairs 2i with 2i + 1
  (the original RoFormer / GPT-J). Dims past the rotary part pass through unchanged; `scale`
  multiplies the rotated ones (YaRN's attention temperature).
  """
  r = 2 * cos_BLF.shape[-1]
  cos, sin = cos_BLF[:, :, None, :], sin_BLF[:, :, None, :]
  rot, rest = x_BLHK[..., :r].astype(jnp.float32), x_BLHK[..., r:]
  if layout == "half":
    a, b = rot[..., : r // 2], rot[..., r // 2:]
    out = jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
  elif layout == "interleaved":
    a, b = rot[..., 0::2], rot[..., 1::2]
    out = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(rot.shape)
  else:
    raise ValueError(f"model.rope.layout={layout!r} is unknown; allowed: half, interleaved")
  if scale != 1.0:
    out = out * scale
  return jnp.concatenate([out.astype(x_BLHK.dtype), rest], axis=-1)


def apply_rope(x_BLHK: jax.Array, positions_BL: jax.Array, inv_freq: jax.Array,
               layout: str = "half", scale: float = 1.0) -> jax.Array:
  """Rotates the first 2 * len(inv_freq) dims of each head by angle position * inv_freq (see
  rotate_by for the layouts and the scale)."""
  return rotate_by(x_BLHK, *rotary_cos_sin(positions_BL, inv_freq), layout, scale)


def _none(dim, cfg, length):
  del length
  return rope_inverse_frequencies(dim, cfg.base), 1.0


def _linear(dim, cfg, length):
  del length
  return rope_inverse_frequencies(dim, cfg.base) / cfg.factor, 1.0


def ntk_base(base: float, factor: float, dim: int) -> float:
  return base * factor ** (dim / (dim - 2)) if dim > 2 else base * factor


def _ntk(dim, cfg, length):
  del length
  return rope_inverse_frequencies(dim, ntk_base(cfg.base, cfg.factor, dim)), 1.0


def dynamic_factor(factor: float, length: int, original_length: int) -> float:
  if length <= original_length:
    return 1.0
  return factor * length / original_length - (factor - 1.0)


def _dynamic_ntk(dim, cfg, length):
  s = dynamic_factor(cfg.factor, length, cfg.original_length)
  return rope_inverse_frequencies(dim, ntk_base(cfg.base, s, dim)), 1.0


YARN_RAMPS = ("dims", "turns")


def _turning_index(turns: float, rotary_dim: int, base: float, original_length: int) -> float:
  """The (fractional) pair index i whose frequency base^(-2i/d) turns `turns` times over
  original_length."""
  return rotary_dim * math.log(original_length / (turns * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp(rotary_dim: int, base: float, original_length: int, beta_fast: float,
              beta_slow: float, ramp: str = "dims") -> jax.Array:
  """gamma_i per rotary pair: 1 for dims that turn often in the original context (kept), 0 for
  slow ones (interpolated); `ramp` as in the module docstring."""
  if ramp == "turns":
    inv_freq = rope_inverse_frequencies(rotary_dim, base)
    turns = original_length * inv_freq / (2 * math.pi)
    return jnp.clip((turns - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
  if ramp != "dims":
    raise ValueError(f"model.rope.yarn_ramp={ramp!r} is unknown; allowed: {', '.join(YARN_RAMPS)}")
  low = max(math.floor(_turning_index(beta_fast, rotary_dim, base, original_length)), 0)
  high = min(math.ceil(_turning_index(beta_slow, rotary_dim, base, original_length)),
             rotary_dim - 1)
  high = max(high, low + 0.001)  # the reference code's guard against an empty ramp
  index = jnp.arange(rotary_dim // 2, dtype=jnp.float32)
  return 1.0 - jnp.clip((index - low) / (high - low), 0.0, 1.0)


def yarn_temperature(factor: float) -> float:
  """sqrt(1/t): the factor on q and k, so logits grow by its square."""
  return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def _yarn(dim, cfg, length):
  del length
  inv_freq = rope_inverse_frequencies(dim, cfg.base)
  gamma = yarn_ramp(dim, cfg.base, cfg.original_length, cfg.beta_fast, cfg.beta_slow,
                    cfg.yarn_ramp)
  return (1 - gamma) * inv_freq / cfg.factor + gamma * inv_freq, yarn_temperature(cfg.factor)


def longrope_attention_factor(factor: float, original_length: int) -> float:
  """LongRoPE's factor on q and k: sqrt(1 + ln s / ln L_orig) (1 for s <= 1)."""
  return math.sqrt(1 + math.log(factor) / math.log(original_length)) if factor > 1 else 1.0


def _longrope(dim, cfg, length):
  table = cfg.long_factor if length > cfg.original_length else cfg.short_factor
  rescale = jnp.asarray(table or (1.0,) * (dim // 2), jnp.float32)
  return (rope_inverse_frequencies(dim, cfg.base) / rescale,
          cfg.attention_factor or longrope_attention_factor(cfg.factor, cfg.original_length))


SCALINGS: dict[str, Callable[[int, RopeOptions, int], tuple[jax.Array, float]]] = {
    "none": _none, "linear": _linear, "ntk": _ntk, "dynamic_ntk": _dynamic_ntk, "yarn": _yarn,
    "longrope": _longrope,
}


def kept_pairs(pairs: int, keep: float) -> int:
  """How many of `pairs` rotary pairs p-RoPE keeps rotating: keep * pairs, rounded."""
  return int(round(keep * pairs))


def keep_fastest(inv_freq: jax.Array, keep: float) -> jax.Array:
  """p-RoPE: the inverse frequencies with all but the fastest `keep` share set to zero (the
  frequencies fall with the pair index, so the slowest are the last)."""
  if keep == 1.0:
    return inv_freq
  kept = kept_pairs(inv_freq.shape[0], keep)
  return jnp.where(jnp.arange(inv_freq.shape[0]) < kept, inv_freq, 0.0)


def scaled_frequencies(rotary_dim: int, cfg: RopeOptions, length: int) -> tuple[jax.Array, float]:
  """(inverse frequencies, q/k scale) of `cfg.scaling` and `cfg.keep` for sequences of `length`
  tokens."""
  if cfg.scaling not in SCALINGS:
    raise ValueError(f"model.rope.scaling={cfg.scaling!r} is unknown; allowed: "
                     f"{', '.join(SCALINGS)}")
  inv_freq, scale = SCALINGS[cfg.scaling](rotary_dim, cfg, length)
  return keep_fastest(inv_freq, cfg.keep), scale


@register("rope")
class Rope(PositionScheme):
  Options = RopeOptions

  def __init__(self, cfg: PositionConfig, *, rngs):
    del rngs
    self.rope = cfg.options
    self.rotary_dim = rotary_dim(cfg.head_dim, cfg.options.fraction)

  @classmethod
  def validate(cls, cfg: PositionConfig, train_length: int) -> None:
    del train_length
    check_rotary_pair("rope", cfg.head_dim, cfg.options.fraction)
    pairs = rotary_dim(cfg.head_dim, cfg.options.fraction) // 2
    for name in ("short_factor", "long_factor"):
      table = getattr(cfg.options, name)
      if table and len(table) != pairs:
        raise ValueError(f"config.model.rope.{name} has {len(table)} factors; LongRoPE needs one "
                         f"per rotary pair: {pairs}")

  def rotate(self, q_BLHK, k_BLHK, positions_BL, length=None):
    inv_freq, scale = scaled_frequencies(self.rotary_dim, self.rope,
                                         length or positions_BL.shape[1])
    cos_sin = rotary_cos_sin(positions_BL, inv_freq)  # once for q and k
    return (rotate_by(q_BLHK, *cos_sin, self.rope.layout, scale),
            rotate_by(k_BLHK, *cos_sin, self.rope.layout, scale))
