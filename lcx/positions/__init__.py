"""Position schemes behind one three-hook interface, chosen by name (`config.model.position`).

A new scheme subclasses PositionScheme, overrides the hooks it needs and registers itself with
@register("name"); the model never changes.
"""
from lcx.positions.base import (PositionConfig, PositionScheme, RopeConfig, available, make,
                                register)
from lcx.positions.absolute import sinusoidal_table
from lcx.positions.alibi import alibi_bias, alibi_slopes
from lcx.positions.rope import apply_rope, rope_inverse_frequencies, rotary_dim

__all__ = [
    "PositionConfig", "PositionScheme", "RopeConfig", "available", "make", "register",
    "sinusoidal_table", "alibi_bias", "alibi_slopes", "apply_rope", "rope_inverse_frequencies",
    "rotary_dim",
]
