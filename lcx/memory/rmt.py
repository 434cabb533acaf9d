"""The Recurrent Memory Transformer (Bulatov et al. 2022), decoder-only form: `tokens` memory
vectors are placed before each segment (read) and again after it (write), the last layer's
outputs at the write places become the next segment's memory, and the language loss is
backpropagated through every segment of the training example (no stop-gradient: the recurrent-
state arm). The first segment reads learned memory embeddings.

Attention stays causal over [read; segment; write], so the read tokens inform every token of the
segment and the write tokens see all of it. The read tokens take the segment's first position
and document id, the write tokens its last, so every position scheme sees them next to the
segment they belong to. The memory flows on across document boundaries, as in the paper.
"""
import dataclasses

import jax.numpy as jnp
from flax import nnx

from lcx.memory.base import MemoryMechanism, register


@register("rmt")
class RecurrentMemory(MemoryMechanism):

  @dataclasses.dataclass(frozen=True)
  class Options:
    tokens: int = 8  # memory vectors read and written per segment

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    shape = (cfg.options.tokens, cfg.d_model)
    self.initial = nnx.Param(nnx.initializers.normal(stddev=1.0)(
        rngs.params(), shape, jnp.dtype(cfg.param_dtype)), logical_axes=(None, "embed"))

  def init_state(self, batch: int) -> dict:
    memory_BTD = jnp.broadcast_to(self.initial[...], (batch, *self.initial.shape))
    return {"layers": self.init_layers(batch),
            "tokens": memory_BTD.astype(self.cfg.compute_dtype)}

  def wrap(self, state: dict, x_BCD, positions_BC, segment_ids_BC):
    T = self.cfg.options.tokens
    memory_BTD = state["tokens"].astype(x_BCD.dtype)
    around = lambda x: jnp.concatenate([jnp.repeat(x[:, :1], T, axis=1), x,
                                        jnp.repeat(x[:, -1:], T, axis=1)], axis=1)
    return (jnp.concatenate([memory_BTD, x_BCD, memory_BTD], axis=1), around(positions_BC),
            around(segment_ids_BC))

  def unwrap(self, state: dict, x_BSD):
    T = self.cfg.options.tokens
    return x_BSD[:, T:-T], {**state, "tokens": x_BSD[:, -T:]}

  @classmethod
  def memory_keys(cls, cfg) -> float:
    return float(cfg.options.tokens)  # the read tokens, before the segment

  @classmethod
  def validate(cls, cfg, train_length: int) -> None:
    if cfg.options.tokens < 1:
      raise ValueError(f"config.model.rmt.tokens={cfg.options.tokens} must be a positive integer")
