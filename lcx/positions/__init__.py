"""Position schemes behind one three-hook interface, chosen by name (`config.model.position`).

A new scheme subclasses PositionScheme, overrides the hooks it needs and registers itself with
@register("name") in its own module, imported here; the model never changes. Its options, if it
has any, follow the convention in lcx.registry (the memory mechanisms' too).
"""
from lcx.positions.base import (LAYERS_FIELD, PositionConfig, PositionScheme, available,
                                bias_kind, check_options, embeds, make, option_types,
                                parse_layer, register, validate)
from lcx.positions.bias import (Bias, BiasKind, FunctionBias, LinearBias, document_cumsum,
                                gate_row_bias)
from lcx.positions.absolute import sinusoidal_table
from lcx.positions.alibi import alibi_bias, alibi_slopes
from lcx.positions.t5 import T5Options, t5_buckets
from lcx.positions.kerple import KerpleOptions, kerple_bias
from lcx.positions.fire import FireOptions, fire_input, fire_mlp
from lcx.positions.fox import FoxOptions, fox_log_gates, gate_bias_init
from lcx.positions.xpos import XposOptions, xpos_scales, xpos_zeta
from lcx.positions.rope import (SCALINGS as ROPE_SCALINGS, YARN_RAMPS, RopeOptions, apply_rope,
                                dynamic_factor, keep_fastest, kept_pairs, ntk_base,
                                rope_inverse_frequencies, rotary_cos_sin, rotary_dim, rotate_by,
                                scaled_frequencies, yarn_ramp, yarn_temperature)

__all__ = [
    "PositionConfig", "PositionScheme", "RopeOptions", "available", "bias_kind", "make",
    "register", "validate", "check_options", "LAYERS_FIELD", "embeds", "parse_layer", "option_types", "Bias", "BiasKind", "FunctionBias",
    "LinearBias", "document_cumsum", "gate_row_bias", "FoxOptions", "fox_log_gates",
    "gate_bias_init", "sinusoidal_table", "alibi_bias", "alibi_slopes", "T5Options", "t5_buckets",
    "KerpleOptions", "kerple_bias", "FireOptions", "fire_input", "fire_mlp", "XposOptions",
    "xpos_scales", "xpos_zeta", "apply_rope", "rope_inverse_frequencies", "rotary_cos_sin",
    "rotate_by", "rotary_dim", "ROPE_SCALINGS", "dynamic_factor", "ntk_base", "scaled_frequencies",
    "YARN_RAMPS", "yarn_ramp", "yarn_temperature", "keep_fastest", "kept_pairs",
]
