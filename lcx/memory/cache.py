"""Keys and values with their positions and segment ids, newest at the end: a decoding cache, and
the memory a mechanism hands a layer's attention."""
import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """One layer's rotated keys and values in a buffer of S slots, newest at the end: a block of
  queries after it is then causal by index, as the kernels define it. Each slot carries the
  segment id of its token; slots never written hold 0, an id no query has, so they are masked."""
  k_BSHK: jax.Array
  v_BSHK: jax.Array
  positions_BS: jax.Array
  segment_ids_BS: jax.Array
  # The tokens of the whole window being decoded, where a local layer's cache holds fewer (its
  # attention window): what length-dependent schemes see. 0: the cache's size.
  context: int = dataclasses.field(default=0, metadata=dict(static=True))
  # Each slot's log forget gate per query head, float32, for a bias made from the data (FoX's:
  # the bias of a query and a key is the sum of the gates between them); None for other schemes.
  # Unwritten slots hold 0.
  log_gates_BSH: jax.Array | None = None

  @classmethod
  def empty(cls, batch: int, size: int, heads: int, head_dim: int, dtype,
            context: int = 0, gate_heads: int = 0) -> "KVCache":
    """`gate_heads`: the query heads whose log gates each slot keeps (0: none kept)."""
    zeros = jnp.zeros((batch, size, heads, head_dim), dtype)
    gates = jnp.zeros((batch, size, gate_heads), jnp.float32) if gate_heads else None
    return cls(zeros, zeros, jnp.zeros((batch, size), jnp.int32),
               jnp.zeros((batch, size), jnp.int32), context, gates)

  @property
  def size(self) -> int:
    return self.k_BSHK.shape[1]

  def concat(self, k_BCHK, v_BCHK, positions_BC, segment_ids_BC,
             log_gates_BCH=None) -> "KVCache":
    """These entries followed by C new ones (S + C slots); their log gates where the cache keeps
    them."""
    join = lambda old, new: jnp.concatenate([old, new.astype(old.dtype)], axis=1)
    gates = self.log_gates_BSH
    if gates is None and log_gates_BCH is not None:
      raise ValueError("this cache keeps no log forget gates; make it with gate_heads")
    if gates is not None:  # a layer whose scheme makes none (a per-layer pattern): no decay
      new = (jnp.zeros((*positions_BC.shape, gates.shape[2]), gates.dtype)
             if log_gates_BCH is None else log_gates_BCH)
      gates = join(gates, new)
    return KVCache(join(self.k_BSHK, k_BCHK), join(self.v_BSHK, v_BCHK),
                   join(self.positions_BS, positions_BC), join(self.segment_ids_BS, segment_ids_BC),
                   self.context, gates)

  def last(self, n: int) -> "KVCache":
    """The newest n slots."""
    return jax.tree.map(lambda x: x[:, x.shape[1] - n:], self)

  def first(self, n: int) -> "KVCache":
    """The oldest n slots."""
    return jax.tree.map(lambda x: x[:, :n], self)

  def append(self, k_BCHK, v_BCHK, positions_BC, log_gates_BCH=None) -> "KVCache":
    """Decoding one stream: the oldest C slots dropped, the new entries (segment 1) at the end."""
    ones = jnp.ones(positions_BC.shape, jnp.int32)
    return self.concat(k_BCHK, v_BCHK, positions_BC, ones, log_gates_BCH).last(self.size)
