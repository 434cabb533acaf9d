"""The Compressive Transformer (Rae et al. 2020, section 3): an XL memory of `length` tokens per
layer whose evicted entries are not dropped but compressed at rate c into a second, compressed
memory of `compressed_length` entries; each layer attends to [compressed; memory; segment].

What is compressed is the layer's cached keys and values (lcx caches those, already rotated,
rather than the hidden states the paper caches). `compression`: `mean` (mean pooling over c
consecutive entries, the paper's simplest f_c) or `conv` (a learned 1-D convolution of kernel
and stride c per layer, over each head's key and value features; it learns from the language
loss of later segments in the same training example: the paper's auxiliary
attention-reconstruction loss is not implemented). A compressed entry keeps the mean position of
its c tokens, and their document id if they share one (else it is masked, like an empty slot).
When a segment evicts a number of entries that c does not divide, the oldest remainder is
dropped, so the newest evicted entries always form whole groups.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lcx.memory.base import MemoryMechanism, register
from lcx.memory.cache import KVCache

COMPRESSIONS = ("mean", "conv")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CompressiveState:
  memory: KVCache
  compressed: KVCache


@register("compressive")
class CompressiveMemory(MemoryMechanism):

  @dataclasses.dataclass(frozen=True)
  class Options:
    length: int = 0  # the XL memory per layer (0: model.segment_len)
    compressed_length: int = 0  # compressed entries per layer (0: as many as `length`)
    rate: int = 3  # c: evicted entries per compressed one
    compression: str = "mean"  # mean, or conv (learned)

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    o, K = cfg.options, cfg.head_dim
    if o.compression == "conv":
      # Starts as mean pooling (identity per tap, / c), so training begins where `mean` is.
      eye = jnp.broadcast_to(jnp.eye(K) / o.rate, (cfg.n_layers, 2, o.rate, K, K))
      self.conv = nnx.Param(eye.astype(jnp.float32))

  @property
  def length(self) -> int:
    return self.cfg.options.length or self.cfg.segment_len

  @property
  def compressed_length(self) -> int:
    return self.cfg.options.compressed_length or self.length

  def init_layers(self, batch: int) -> list[CompressiveState]:
    empty = lambda n: KVCache.empty(batch, n, self.cfg.kv_heads, self.cfg.head_dim,
                                    jnp.dtype(self.cfg.compute_dtype),
                                    gate_heads=self.cfg.gate_heads)
    return [CompressiveState(empty(self.length), empty(self.compressed_length))
            for _ in range(self.cfg.n_layers)]

  def entries(self, state: CompressiveState, layer) -> KVCache:
    del layer
    c = state.compressed
    return c.concat(state.memory.k_BSHK, state.memory.v_BSHK, state.memory.positions_BS,
                    state.memory.segment_ids_BS, state.memory.log_gates_BSH)

  def compress(self, evicted: KVCache, layer) -> KVCache:
    """c consecutive entries -> one: pooled keys and values, mean position, shared document id
    (0 if they differ), and the sum of their log forget gates where kept (a bias made from the
    data then decays from the entry as from the last of its tokens). The oldest len % c entries
    are left out."""
    rate = self.cfg.options.rate
    n = evicted.size // rate
    groups = lambda x: x[:, evicted.size - n * rate:].reshape(x.shape[0], n, rate, *x.shape[2:])
    k, v = groups(evicted.k_BSHK), groups(evicted.v_BSHK)  # (B, n, c, H, K)
    if self.cfg.options.compression == "conv":
      w = self.conv[...][layer].astype(k.dtype)  # (2, c, K, K)
      k = jnp.einsum("bnchk,ckj->bnhj", k, w[0])
      v = jnp.einsum("bnchk,ckj->bnhj", v, w[1])
    else:
      k, v = k.mean(axis=2), v.mean(axis=2)
    positions = groups(evicted.positions_BS).mean(axis=2).astype(jnp.int32)
    ids = groups(evicted.segment_ids_BS)
    same = jnp.all(ids == ids[:, :, :1], axis=2)
    gates = (None if evicted.log_gates_BSH is None
             else groups(evicted.log_gates_BSH).sum(axis=2))
    return KVCache(k, v, positions, jnp.where(same, ids[:, :, 0], 0), log_gates_BSH=gates)

  def update(self, state: CompressiveState, k_BCHK, v_BCHK, positions_BC, segment_ids_BC, layer,
             log_gates_BCH=None):
    k_BCHK, v_BCHK, log_gates_BCH = jax.lax.stop_gradient((k_BCHK, v_BCHK, log_gates_BCH))
    every = state.memory.concat(k_BCHK, v_BCHK, positions_BC, segment_ids_BC, log_gates_BCH)
    evicted = every.first(every.size - self.length)
    compressed = state.compressed
    if evicted.size >= self.cfg.options.rate:
      new = self.compress(evicted, layer)
      compressed = compressed.concat(new.k_BSHK, new.v_BSHK, new.positions_BS,
                                     new.segment_ids_BS, new.log_gates_BSH).last(
                                         self.compressed_length)
    return CompressiveState(every.last(self.length), compressed)

  @classmethod
  def memory_keys(cls, cfg) -> float:
    length = cfg.options.length or cfg.segment_len
    return float(length + (cfg.options.compressed_length or length))

  @classmethod
  def validate(cls, cfg, train_length: int) -> None:
    o = cfg.options
    if o is None:
      return
    for name in ("length", "compressed_length"):
      if getattr(o, name) < 0:
        raise ValueError(f"config.model.compressive.{name}={getattr(o, name)} must be >= 0 (0: "
                         f"{'model.segment_len' if name == 'length' else 'length'})")
    if o.rate < 1:
      raise ValueError(f"config.model.compressive.rate={o.rate} must be a positive integer")
    if o.compression not in COMPRESSIONS:
      raise ValueError(f"config.model.compressive.compression={o.compression!r} is unknown; "
                       f"allowed: {', '.join(COMPRESSIONS)}")
