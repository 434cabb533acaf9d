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

  @classmethod
  def empty(cls, batch: int, size: int, heads: int, head_dim: int, dtype,
            context: int = 0) -> "KVCache":
    zeros = jnp.zeros((batch, size, heads, head_dim), dtype)
    return cls(zeros, zeros, jnp.zeros((batch, size), jnp.int32),
               jnp.zeros((batch, size), jnp.int32), context)

  @property
  def size(self) -> int:
    return self.k_BSHK.shape[1]

  def concat(self, k_BCHK, v_BCHK, positions_BC, segment_ids_BC) -> "KVCache":
    """These entries followed by C new ones (S + C slots)."""
    join = lambda old, new: jnp.concatenate([old, new.astype(old.dtype)], axis=1)
    return KVCache(join(self.k_BSHK, k_BCHK), join(self.v_BSHK, v_BCHK),
                   join(self.positions_BS, positions_BC), join(self.segment_ids_BS, segment_ids_BC),
                   self.context)

  def last(self, n: int) -> "KVCache":
    """The newest n slots."""
    return jax.tree.map(lambda x: x[:, x.shape[1] - n:], self)

  def first(self, n: int) -> "KVCache":
    """The oldest n slots."""
    return jax.tree.map(lambda x: x[:, :n], self)

  def append(self, k_BCHK, v_BCHK, positions_BC) -> "KVCache":
    """Decoding one stream: the oldest C slots dropped, the new entries (segment 1) at the end."""
    ones = jnp.ones(positions_BC.shape, jnp.int32)
    return self.concat(k_BCHK, v_BCHK, positions_BC, ones).last(self.size)
