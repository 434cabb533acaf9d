"""The model's configuration: what a run's model.* fields become at the model's boundary.

Light on purpose (no Flax module, no kernel): the config, the report's readers and the presets
import it to check and describe a model without building one.
"""
import dataclasses
import math

import jax

from lcx import memory as memory_lib
from lcx import positions
from lcx.model.temperature import TemperatureOptions


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  # Key/value heads (grouped-query attention: each serves n_heads / n_kv_heads query heads);
  # 0: n_heads (multi-head attention).
  n_kv_heads: int = 0
  head_dim: int = 16
  mlp_dim: int = 256
  mlp: str = "swiglu"
  tie_embeddings: bool = True
  # Tied embeddings: the logits x @ E^T are multiplied by this. 0: d_model ** -0.5, lcx's own
  # (unit-variance logits at init); 1: as Llama-family models compute them (imported ones).
  tied_logit_scale: float = 0.0
  # RMSNorm of each query and key head (a learned scale per head dimension, shared by the heads)
  # before the position scheme rotates them: most 2025 models, and DroPE's recipe.
  qk_norm: bool = False
  # Attention temperature (lcx.model.temperature): queries scaled by a function of position, in
  # the layers whose scheme it names (model.temperature.*).
  temperature: TemperatureOptions = TemperatureOptions()
  position: str = "rope"
  max_len: int = 128
  attention: str = "auto"  # lcx.attention.CHOICES; "auto" picks per backend and scheme
  # Local attention: a query sees only the `window` positions up to its own (sliding window), or
  # only the keys of its chunk of `chunk` positions (chunked); 0: off. Which layers are local:
  # attention_layers, a pattern of 'local' / 'global' repeated over the layers (empty: all).
  window: int = 0
  chunk: int = 0
  attention_layers: tuple = ()
  attention_block: int = 128  # blockwise attention: query and key tile length (128: fastest on CPU)
  # How keys reach the queries of a sequence sharded over the mesh's context axis: "gather" or
  # "ring" (config.mesh.context_exchange; lcx.attention.context).
  context_exchange: str = "gather"
  remat: str = "none"  # what each block keeps for the backward pass: none (all), full, dots
  scan_layers: bool = False  # run the blocks as one lax.scan: compile time constant in depth
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  norm_eps: float = 1e-6
  position_options: object = None  # the scheme's own options (model.rope, ...), defaults if None
  # A per-layer pattern (model.position_layers, parsed): (scheme, its options) of each entry,
  # layer i taking entry i % len; empty: every layer `position`.
  position_pattern: tuple = ()
  # Memory (lcx.memory): sequences run as segments of segment_len tokens (0: one segment, the
  # plain model) with the mechanism's state carried from one to the next.
  memory: str = "none"
  segment_len: int = 0
  memory_options: object = None  # the mechanism's own options (model.xl, ...), defaults if None
  # An evaluation ablation: every segment starts from the mechanism's initial state (its memory
  # wiped), so the same trained weights with and without their memory show what the memory adds.
  memory_reset: bool = False

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  def local_layer(self, layer: int) -> str:
    """How `layer` attends locally: "window" (model.window) or "chunk" (model.chunk) where the
    pattern makes it local; "" (false) for a global layer."""
    if not (self.window or self.chunk):
      return ""
    if self.attention_layers and self.attention_layers[layer % len(self.attention_layers)] != "local":
      return ""
    return "window" if self.window else "chunk"

  @property
  def layer_period(self) -> int:
    """Layers after which the per-layer patterns (schemes, local/global) repeat."""
    return math.lcm(len(self.layer_positions()), len(self.attention_layers) or 1)

  def layer_positions(self) -> tuple[tuple[str, object], ...]:
    """(scheme, options) of each entry of the per-layer pattern (one entry without one)."""
    return self.position_pattern or ((self.position, self.position_options),)

  def position_config(self, options=None) -> positions.PositionConfig:
    """What a scheme is built with: `options` (a pattern entry's) or the model's own."""
    return positions.PositionConfig(d_model=self.d_model, n_heads=self.n_heads,
                                    head_dim=self.head_dim, max_len=self.max_len,
                                    n_layers=self.n_layers, param_dtype=self.param_dtype,
                                    options=options if options is not None
                                    else self.position_options)

  def attention_context(self, seq_len: int, causal: bool = False) -> tuple[float, float]:
    """(the length a query's attention runs over, the keys a memory adds to it) at a training
    length: what the attention term of the FLOP count (lcx.metrics.flops_per_token) uses. Local
    layers see their window or chunk only: the span is the mean over layers, for the causal count
    (`causal`) the one that gives its keys per query (a window of W < L: W - W(W - 1) / 2L of
    them, not the L / 2 of a global layer)."""
    if self.segment_len:
      return self.segment_len, memory_lib.memory_keys(self.memory, self.memory_config())
    if not (self.window or self.chunk):
      return seq_len, 0.0
    spans = []
    for layer in range(self.n_layers):
      if not self.local_layer(layer):
        spans.append(seq_len)
      elif causal:  # 2 x the mean keys a query sees, as flops_per_token halves the span
        W = min(self.window or self.chunk, seq_len)
        keys = W - W * (W - 1) / (2 * seq_len) if self.window else (W + 1) / 2
        spans.append(2 * keys)
      else:
        spans.append(min(self.window or self.chunk, seq_len))
    return sum(spans) / len(spans), 0.0

  def memory_config(self) -> memory_lib.MemoryConfig:
    return memory_lib.MemoryConfig(
        n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.kv_heads,
        head_dim=self.head_dim, segment_len=self.segment_len, d_model=self.d_model, param_dtype=self.param_dtype,
        compute_dtype=self.compute_dtype, scan_layers=self.scan_layers,
        gate_heads=self.n_heads if self.makes_gates else 0, options=self.memory_options)

  @property
  def makes_gates(self) -> bool:
    """Whether a layer's position bias is made from the data (log forget gates, FoX's), which
    KV caches and memories then keep per key."""
    return any(getattr(positions.bias_kind(name), "rows", False)
               for name, _ in self.layer_positions())


REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each block's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}
