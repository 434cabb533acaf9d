"""The Forgetting Transformer (FoX; Lin et al., ICLR 2025): a forget gate per head on each token,
f_t = sigmoid(w_h . x_t + b_h) of the attention layer's input x_t, and the logit of query i and
key j gets the log of the gates after j up to i:

    s_ij = q_i . k_j / sqrt(d) + c_i - c_j,   c_t = sum_{l <= t} log f_l  (per head, per document)

No position encoding besides: a head whose gates stay near 1 attends like NoPE, one whose gates
are a constant f is ALiBi with slope -log f. The scheme makes the log gates (its `log_gates`
hook); the cumulative sums and the kernels' per-row vectors are lcx.positions.bias.gate_row_bias.

Options (`model.fox.*`):
  gate            "data": the paper's gate of the input; "bias": sigmoid(b_h) alone, the paper's
                  data-independent ablation (a learned ALiBi slope per head and layer)
  decay_time_min/max  b_h's initial values: 0 (both) is the paper's default for the data gate,
                  b = 0 (f = 1/2 at the start); otherwise head h's decay time T_h (the distance
                  over which its bias falls by 1) runs log-evenly from min to max, b_h = -log(e^(1/T_h)
                  - 1), the paper's initialization for gates that start near 1
The gate's weights start as the reference code's linear layers do (normal, std 0.02).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcx.positions.base import PositionConfig, PositionScheme, register
from lcx.positions.bias import LEARNED_ROWS

GATES = ("data", "bias")
WEIGHT_STD = 0.02  # the reference code's initializer_range


@dataclasses.dataclass(frozen=True)
class FoxOptions:
  gate: str = "data"
  decay_time_min: float = 0.0
  decay_time_max: float = 0.0

  def check(self) -> None:
    if self.gate not in GATES:
      raise ValueError(f"config.model.fox.gate={self.gate!r} is unknown; allowed: "
                       f"{', '.join(GATES)}")
    low, high = self.decay_time_min, self.decay_time_max
    if not ((low == high == 0) or 0 < low <= high):
      raise ValueError(f"config.model.fox.decay_time_min={low!r} and decay_time_max={high!r} "
                       "must both be 0 (gate biases start at 0) or satisfy 0 < min <= max (tokens)")


def gate_bias_init(n_heads: int, decay_time_min: float, decay_time_max: float) -> np.ndarray:
  """(H,) initial gate biases: head h's gate sigmoid(b_h) with -1 / log sigmoid(b_h) = T_h, the
  decay times log-evenly spaced from min to max; zeros where both are 0."""
  if decay_time_min == decay_time_max == 0:
    return np.zeros(n_heads, np.float32)
  times = np.exp(np.linspace(math.log(decay_time_min), math.log(decay_time_max), n_heads))
  return (-np.log(np.expm1(1.0 / times))).astype(np.float32)


def fox_log_gates(x_BLD, w_DH, b_H) -> jax.Array:
  """log sigmoid(x . w_h + b_h): (B, L, H) float32 (w None: the bias alone, broadcast)."""
  if w_DH is None:
    return jnp.broadcast_to(jax.nn.log_sigmoid(b_H.astype(jnp.float32)),
                            (*x_BLD.shape[:2], b_H.shape[0]))
  B, L, D = x_BLD.shape
  logits = x_BLD.reshape(B * L, D).astype(jnp.float32) @ w_DH.astype(jnp.float32)
  return jax.nn.log_sigmoid(logits + b_H.astype(jnp.float32)).reshape(B, L, -1)


@register("fox")
class Fox(PositionScheme):
  Options = FoxOptions
  BIAS = LEARNED_ROWS

  def __init__(self, cfg: PositionConfig, *, rngs: nnx.Rngs):
    o, dtype = cfg.options, jnp.dtype(cfg.param_dtype)
    bias = gate_bias_init(cfg.n_heads, o.decay_time_min, o.decay_time_max)
    self.gate_bias = nnx.Param(jnp.broadcast_to(jnp.asarray(bias, dtype),
                                                (cfg.n_layers, cfg.n_heads)),
                               logical_axes=(None, "heads"))
    self.data_gate = o.gate == "data"
    if self.data_gate:
      w = WEIGHT_STD * jax.random.normal(rngs.params(), (cfg.n_layers, cfg.d_model, cfg.n_heads))
      self.gate_weight = nnx.Param(w.astype(dtype), logical_axes=(None, "embed", "heads"))

  def log_gates(self, x_BLD, layer):
    w = self.gate_weight[...][layer] if self.data_gate else None
    return fox_log_gates(x_BLD, w, self.gate_bias[...][layer])
