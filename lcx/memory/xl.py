"""Segment-level recurrence (Transformer-XL, Dai et al. 2019, section 3.2): each layer attends to
the keys and values of the previous `model.xl.length` tokens, cached from earlier segments and
not differentiated through (the paper's stop-gradient, SG(h) in its equation for h~)."""
import dataclasses

import jax
import jax.numpy as jnp

from lcx.memory.base import MemoryMechanism, register
from lcx.memory.cache import KVCache


@register("xl")
class SegmentRecurrence(MemoryMechanism):

  @dataclasses.dataclass(frozen=True)
  class Options:
    length: int = 0  # cached tokens per layer (0: model.segment_len, the paper's M = L)

  @property
  def length(self) -> int:
    return self.cfg.options.length or self.cfg.segment_len

  def init_layers(self, batch: int) -> list[KVCache]:
    return [KVCache.empty(batch, self.length, self.cfg.kv_heads, self.cfg.head_dim,
                          jnp.dtype(self.cfg.compute_dtype), gate_heads=self.cfg.gate_heads)
            for _ in range(self.cfg.n_layers)]

  def entries(self, layer_state: KVCache, layer) -> KVCache:
    del layer
    return layer_state

  def update(self, layer_state: KVCache, k_BCHK, v_BCHK, positions_BC, segment_ids_BC, layer,
             log_gates_BCH=None):
    del layer
    k_BCHK, v_BCHK, log_gates_BCH = jax.lax.stop_gradient((k_BCHK, v_BCHK, log_gates_BCH))
    return layer_state.concat(k_BCHK, v_BCHK, positions_BC, segment_ids_BC,
                              log_gates_BCH).last(self.length)

  @classmethod
  def memory_keys(cls, cfg) -> float:
    return float(cfg.options.length or cfg.segment_len)

  @classmethod
  def validate(cls, cfg, train_length: int) -> None:
    if cfg.options is not None and cfg.options.length < 0:
      raise ValueError(f"config.model.xl.length={cfg.options.length} must be >= 0 (0: "
                       "model.segment_len)")
