"""Attention temperature: queries scaled by a function of their position, per layer.

  logn    max(1, log(p + 1) / log(length))                 Qwen's log-n scaling (length: the
                                                            training length)
  llama4  1 + beta ln(1 + floor((p + 1) / floor_scale))     Llama 4's NoPE layers (beta 0.1,
                                                            floor_scale 8192)
  ssmax   s_h ln(p + 1), s_h learned per head and layer     Scalable-Softmax (Nakanishi 2025):
                                                            softmax over n = p + 1 keys of
                                                            (s ln n) z
  fixed   factor                                            one factor
  drope   1 + drope_c ln(L / length) past length, else 1     DroPE's test-time scaling (Gelberg
                                                            et al. 2025), L the sequence length
p is the query's position (0-based; a causal query at p sees p + 1 keys). Scaling q by a factor
scales every logit of that query by it, the same as dividing the softmax temperature, and
commutes with RoPE's rotation, so it is applied to the rotated queries. `schemes` limits it to
the layers whose position scheme is one of them (Llama 4: only its NoPE layers).
"""
import dataclasses
import math

import jax.numpy as jnp

KINDS = ("none", "logn", "llama4", "ssmax", "fixed", "drope")


@dataclasses.dataclass(frozen=True)
class TemperatureOptions:
  kind: str = "none"
  length: int = 0  # logn, drope: the training length (0: data.seq_len)
  beta: float = 0.1  # llama4
  floor_scale: int = 8192  # llama4
  factor: float = 1.0  # fixed
  drope_c: float = 0.0  # drope: c, fitted on validation perplexity (python -m lcx.drope fit)
  # ssmax: the initial s of every head, 0.43 as in the paper's Figure 1 and its public ports
  ssmax_init: float = 0.43
  schemes: tuple = ()  # the position schemes of the layers it applies to; (): every layer

  def check(self) -> None:
    problems = [
        (self.kind not in KINDS, f"kind={self.kind!r} is unknown; allowed: {', '.join(KINDS)}"),
        (self.kind in ("logn", "drope") and self.length < 2,
         f"length={self.length} must be at least 2 for {self.kind} (the training length; 0 "
         "fills it in)"),
        (self.drope_c < 0, f"drope_c={self.drope_c} must be >= 0"),
        (self.beta < 0, f"beta={self.beta} must be >= 0"),
        (self.floor_scale < 1, f"floor_scale={self.floor_scale} must be a positive integer"),
        (self.factor <= 0, f"factor={self.factor} must be positive"),
    ]
    for bad, what in problems:
      if bad:
        raise ValueError(f"config.model.temperature.{what}")

  def applies_to(self, scheme: str) -> bool:
    """Whether a layer with this position scheme takes the temperature."""
    return self.kind != "none" and (not self.schemes or scheme in self.schemes)


def query_scale(options: TemperatureOptions, positions_BL, ssmax_H=None, length=None):
  """The factor of each query, (B, L, 1) or with ssmax (B, L, H), float32. `length`: the
  sequence's (default L; a decoding cache passes its window's), for drope."""
  p = positions_BL.astype(jnp.float32)[..., None]
  if options.kind == "drope":
    ratio = (length or positions_BL.shape[1]) / options.length
    return jnp.full_like(p, 1.0 + options.drope_c * math.log(ratio) if ratio > 1 else 1.0)
  if options.kind == "logn":
    return jnp.maximum(1.0, jnp.log(p + 1) / jnp.log(float(options.length)))
  if options.kind == "llama4":
    return 1.0 + options.beta * jnp.log1p(jnp.floor((p + 1) / options.floor_scale))
  if options.kind == "ssmax":
    return ssmax_H.astype(jnp.float32) * jnp.log(p + 1)
  if options.kind == "fixed":
    return jnp.full_like(p, options.factor)
  raise ValueError(f"model.temperature.kind={options.kind!r} is unknown; allowed: "
                   f"{', '.join(KINDS)}")
