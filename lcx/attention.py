"""Attention implementations behind one signature.

  attend(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
         q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True) -> o_BQHK

Causality is by index: query i sees keys j <= i + (K - Q), so a query block aligned with the end
of the keys (a cache) is handled too. Segment ids, when given, keep packed documents apart.
`bias_fn(q_positions, k_positions) -> (B, H, Q, K)` is the position scheme's bias; a blockwise
kernel calls it per tile, the dense reference once.
"""
import jax
import jax.numpy as jnp

_MASKED = -1e30  # finite, so a fully masked row gives a uniform softmax rather than NaN


def dense_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                    q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True):
  """Reference implementation: the full (Q, K) score matrix in float32."""
  head_dim = q_BQHK.shape[-1]
  scores_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_BQHK, k_BKHK,
                           preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
  if bias_fn is not None:
    bias = bias_fn(q_positions_BQ, k_positions_BK)
    if bias is not None:
      scores_BHQK = scores_BHQK + bias
  q_len, k_len = q_BQHK.shape[1], k_BKHK.shape[1]
  mask = jnp.ones((1, 1, q_len, k_len), dtype=bool)
  if causal:
    mask = jnp.tril(mask, k=k_len - q_len)
  if q_segment_ids_BQ is not None:
    same = q_segment_ids_BQ[:, :, None] == k_segment_ids_BK[:, None, :]
    mask = mask & same[:, None, :, :]
  scores_BHQK = jnp.where(mask, scores_BHQK, _MASKED)
  probs = jax.nn.softmax(scores_BHQK, axis=-1).astype(v_BKHK.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v_BKHK)


IMPLEMENTATIONS = {"dense": dense_attention}


def get(name: str):
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention={name!r} is unknown; allowed: {', '.join(IMPLEMENTATIONS)}")
  return IMPLEMENTATIONS[name]
