"""The Memorizing Transformer (Wu et al. 2022, section 3): one attention layer also keeps the keys
and values of past segments in an external memory of `size` entries per sequence, retrieves for
each query the top k of them by dot product, attends to those, and mixes that with its local
attention through a learned gate per head: o = g o_memory + (1 - g) o_local, g = sigmoid(b_h).

Exact top-k (jax.lax.top_k) on every backend. The memory is not differentiated through (the
paper's stop-gradient), keeps the newest `size` entries, and answers a query only from its own
document (entries carry document ids: the paper's reset at document boundaries). As in the
paper, the retrieved entries get no position bias; a rotary scheme's keys were stored rotated at
their own positions. A query whose document has nothing in memory yet uses its local attention
alone. The other layers attend within the segment.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lcx.memory.base import MemoryMechanism, register
from lcx.memory.cache import KVCache


def retrieve(q_BCHK, memory: KVCache, segment_ids_BC, k: int):
  """Attention of each query over its top-k memory entries of the same document: (output
  (B, C, H, K), whether it had any such entry (B, C, H)). The memory may hold fewer heads than
  the queries (G, grouped-query attention): each serves its H / G query heads."""
  B, C, H, K = q_BCHK.shape
  S, G = memory.k_BSHK.shape[1], memory.k_BSHK.shape[2]
  k_BSGK = memory.k_BSHK.astype(q_BCHK.dtype)
  if G == H:
    scores_BHCS = jnp.einsum("bchk,bshk->bhcs", q_BCHK, k_BSGK, preferred_element_type=jnp.float32)
  else:  # each memory head against its group of query heads, never repeated
    scores_BHCS = jnp.einsum("bcgrk,bsgk->bgrcs", q_BCHK.reshape(B, C, G, H // G, K), k_BSGK,
                             preferred_element_type=jnp.float32).reshape(B, H, C, S)
  scores_BHCS = scores_BHCS * K ** -0.5
  same = segment_ids_BC[:, None, :, None] == memory.segment_ids_BS[:, None, None, :]
  scores_BHCS = jnp.where(same, scores_BHCS, -jnp.inf)
  top_BHCk, index_BHCk = jax.lax.top_k(scores_BHCS, min(k, memory.size))
  found_BHCk = jnp.isfinite(top_BHCk)
  probs_BHCk = jax.nn.softmax(jnp.where(found_BHCk, top_BHCk, -1e30), axis=-1)
  probs_BHCk = jnp.where(found_BHCk, probs_BHCk, 0.0)
  v_BGSK = memory.v_BSHK.transpose(0, 2, 1, 3)
  if G == H:
    picked_BHCkK = jax.vmap(jax.vmap(lambda v, i: v[i]))(v_BGSK, index_BHCk)
  else:  # the R query heads of a group pick from its one memory head
    index_BGRCk = index_BHCk.reshape(B, G, H // G, C, -1)
    picked_BHCkK = jax.vmap(jax.vmap(lambda v, i: v[i]))(v_BGSK, index_BGRCk).reshape(
        B, H, C, index_BHCk.shape[-1], K)
  o_BHCK = jnp.einsum("bhck,bhckd->bhcd", probs_BHCk.astype(v_BGSK.dtype), picked_BHCkK)
  return o_BHCK.transpose(0, 2, 1, 3), found_BHCk.any(axis=-1).transpose(0, 2, 1)


@register("knn")
class KnnMemory(MemoryMechanism):

  @dataclasses.dataclass(frozen=True)
  class Options:
    size: int = 1024  # memory entries per sequence
    k: int = 32  # entries retrieved per query
    layer: int = -1  # the layer with the memory (negative: from the top; the paper: 9 of 12)

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.validate(cfg, cfg.segment_len)
    self.gate = nnx.Param(jnp.zeros((cfg.n_heads,), jnp.float32))  # sigmoid(0): an even mix

  @property
  def layer(self) -> int:
    return self.cfg.options.layer % self.cfg.n_layers

  def init_layers(self, batch: int) -> list:
    state = [None] * self.cfg.n_layers
    state[self.layer] = KVCache.empty(batch, self.cfg.options.size, self.cfg.kv_heads,
                                      self.cfg.head_dim, jnp.dtype(self.cfg.compute_dtype))
    return state

  def attend(self, layer_state, layer, q_BCHK, k_BCHK, v_BCHK, positions_BC, segment_ids_BC, *,
             attend, cache_attend, bias_fn, log_gates_BCH=None):
    # the retrieved entries get no position bias, a bias made from the data included (as the
    # paper: they come from anywhere in the past); the segment's own keys get the scheme's
    local_BCHK = super().attend(None, layer, q_BCHK, k_BCHK, v_BCHK, positions_BC,
                                segment_ids_BC, attend=attend, cache_attend=cache_attend,
                                bias_fn=bias_fn, log_gates_BCH=log_gates_BCH)
    if layer_state is None:
      return local_BCHK
    retrieved_BCHK, found_BCH = retrieve(q_BCHK, layer_state, segment_ids_BC, self.cfg.options.k)
    g_H = jax.nn.sigmoid(self.gate[...]).astype(local_BCHK.dtype)[:, None]
    mixed_BCHK = g_H * retrieved_BCHK.astype(local_BCHK.dtype) + (1 - g_H) * local_BCHK
    return jnp.where(found_BCH[..., None], mixed_BCHK, local_BCHK)

  def update(self, layer_state, k_BCHK, v_BCHK, positions_BC, segment_ids_BC, layer,
             log_gates_BCH=None):
    del log_gates_BCH  # retrieval ignores them
    if layer_state is None:
      return None
    k_BCHK, v_BCHK = jax.lax.stop_gradient(k_BCHK), jax.lax.stop_gradient(v_BCHK)
    return layer_state.concat(k_BCHK, v_BCHK, positions_BC, segment_ids_BC).last(
        self.cfg.options.size)

  @classmethod
  def memory_keys(cls, cfg) -> float:
    # one layer scores every entry (the top-k's own attention is k keys more)
    return (cfg.options.size + cfg.options.k) / cfg.n_layers

  @classmethod
  def validate(cls, cfg, train_length: int) -> None:
    if cfg.scan_layers:
      raise ValueError("config.model.scan_layers=true cannot run knn: its memory is in one layer, "
                       "and a scan runs identical layers; set config.model.scan_layers=false")
    o = cfg.options
    if o is None:
      return
    for name in ("size", "k"):
      if getattr(o, name) < 1:
        raise ValueError(f"config.model.knn.{name}={getattr(o, name)} must be a positive integer")
    if not -cfg.n_layers <= o.layer < cfg.n_layers:
      raise ValueError(f"config.model.knn.layer={o.layer} is not a layer of the model; allowed: "
                       f"{-cfg.n_layers} to {cfg.n_layers - 1}")
