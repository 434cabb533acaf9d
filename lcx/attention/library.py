"""The dense reference and the libraries' kernels: cuDNN's (GPU) and splash (TPU).

Each has the signature lcx.attention describes. Neither library kernel takes a position bias
computed in the kernel; what each does take of a call is its record's (lcx.attention.kernels).
"""
import functools

import jax
import jax.numpy as jnp

from lcx.attention.tiles import DEFAULT_BLOCK

_MASKED = -1e30  # finite, so a fully masked row gives a uniform softmax rather than NaN


def local_mask(q_positions_BQ, k_positions_BK, window: int = 0, chunk: int = 0):
  """(B, Q, K) which keys a local layer's queries see, by position: with a window, the `window`
  keys up to and including the query's own position (p_q - p_k < window); with a chunk, those of
  the query's chunk (p // chunk equal). Causality and documents are masked besides."""
  diff = q_positions_BQ[:, :, None] - k_positions_BK[:, None, :]
  mask = jnp.ones(diff.shape, bool)
  if window:
    mask = mask & (diff < window)
  if chunk:
    mask = mask & (q_positions_BQ[:, :, None] // chunk == k_positions_BK[:, None, :] // chunk)
  return mask


def dense_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                    q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True,
                    window: int = 0, chunk: int = 0, row_bias=None, q_offset=None,
                    keys_from=None):
  """Reference implementation: the full (Q, K) score matrix in float32. Keys and values may have
  fewer heads than the queries (grouped-query attention: each serves H / G query heads). A local
  layer sees only the keys of its window or chunk (local_mask). `row_bias`: a bias made of two
  per-row vectors (a_BHQ, b_BHK), the score of (i, j) getting a_i - b_j (a data-dependent bias
  such as the Forgetting Transformer's). `q_offset` (may be traced): the keys' index of the first
  query, which then sees keys up to its own index (default: queries aligned to the keys' end).
  `keys_from(k, v, k_positions, k_segment_ids, b_BHK)`: makes the keys the queries meet from those
  given (context parallelism's gather; see blockwise_attention)."""
  if keys_from is not None:
    k_BKHK, v_BKHK, k_positions_BK, k_segment_ids_BK, b_BHK = keys_from(
        k_BKHK, v_BKHK, k_positions_BK, k_segment_ids_BK,
        None if row_bias is None else row_bias[1])
    row_bias = None if row_bias is None else (row_bias[0], b_BHK)
  B, Q, H, head_dim = q_BQHK.shape
  S, G = k_BKHK.shape[1], k_BKHK.shape[2]
  if G == H:
    scores_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_BQHK, k_BKHK,
                             preferred_element_type=jnp.float32)
  else:  # each key/value head against its group of query heads, never repeated
    scores_BHQK = jnp.einsum("bqgrd,bkgd->bgrqk", q_BQHK.reshape(B, Q, G, H // G, head_dim),
                             k_BKHK, preferred_element_type=jnp.float32).reshape(B, H, Q, S)
  scores_BHQK = scores_BHQK / jnp.sqrt(jnp.float32(head_dim))
  if bias_fn is not None:
    bias = bias_fn(q_positions_BQ, k_positions_BK)
    if bias is not None:
      scores_BHQK = scores_BHQK + bias
  if row_bias is not None:
    a_BHQ, b_BHK = row_bias
    scores_BHQK = scores_BHQK + (a_BHQ[..., :, None] - b_BHK[..., None, :]).astype(jnp.float32)
  q_len, k_len = q_BQHK.shape[1], k_BKHK.shape[1]
  mask = jnp.ones((1, 1, q_len, k_len), dtype=bool)
  if causal and q_offset is not None:
    mask = mask & (jnp.arange(k_len) <= jnp.arange(q_len)[:, None] + q_offset)
  elif causal:
    mask = jnp.tril(mask, k=k_len - q_len)
  if q_segment_ids_BQ is not None:
    same = q_segment_ids_BQ[:, :, None] == k_segment_ids_BK[:, None, :]
    mask = mask & same[:, None, :, :]
  if window or chunk:
    mask = mask & local_mask(q_positions_BQ, k_positions_BK, window, chunk)[:, None]
  scores_BHQK = jnp.where(mask, scores_BHQK, _MASKED)
  probs = jax.nn.softmax(scores_BHQK, axis=-1).astype(v_BKHK.dtype)
  if G == H:
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v_BKHK)
  o = jnp.einsum("bgrqk,bkgd->bqgrd", probs.reshape(B, G, H // G, Q, S), v_BKHK)
  return o.reshape(B, Q, H, head_dim)


def _index_window(window: int, chunk: int, causal: bool, kernel: str) -> None:
  """cuDNN and splash mask a local window by token index; neither takes chunks."""
  if chunk:
    raise ValueError(f"{kernel} attention takes no local chunk (model.chunk); use blockwise")
  if window and not causal:
    raise ValueError("a local attention window needs causal attention")


def cudnn_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                    q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True,
                    window: int = 0, chunk: int = 0, implementation: str = "cudnn"):
  """cuDNN's fused attention (GPU) through jax.nn.dot_product_attention, which takes fewer key/value
  heads than query heads as they are. It takes no positional bias computed in the kernel, so
  schemes with a bias are refused (lcx.attention.select). A local window is its
  local_window_size: the `window` keys up to the query's own by index, which is the window by
  position wherever positions count tokens. `implementation`: "xla" checks the call on a CPU."""
  del q_positions_BQ, k_positions_BK
  if bias_fn is not None:
    raise ValueError("cudnn attention takes no position bias")
  _index_window(window, chunk, causal, "cudnn")
  mask = None
  if q_segment_ids_BQ is not None:  # packed documents: a (B, 1, Q, K) boolean mask
    mask = (q_segment_ids_BQ[:, :, None] == k_segment_ids_BK[:, None, :])[:, None]
  if causal and q_BQHK.shape[1] != k_BKHK.shape[1]:
    raise ValueError("cudnn attention needs as many queries as keys for a causal mask")
  return jax.nn.dot_product_attention(q_BQHK, k_BKHK, v_BKHK, mask=mask, is_causal=causal,
                                      local_window_size=(window - 1, 0) if window else None,
                                      implementation=implementation)


def splash_fits(block: int, q_len: int, k_len: int) -> bool:
  """Splash tiles are multiples of 128 (the TPU's lanes) and must divide both lengths."""
  return block % 128 == 0 and q_len % block == 0 and k_len % block == 0


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, q_len: int, k_len: int, causal: bool, block_q: int, block_k: int,
                   interpret: bool, shared_kv: bool = False, window: int = 0):
  """A splash kernel for one shape (built once: its tile map of the mask is worked out in numpy,
  so tiles outside a local window are skipped). `shared_kv`: `heads` query heads share one
  key/value head (splash's multi-query form)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # TPU-only; imported on use
      splash_attention_kernel as splash, splash_attention_mask as masks)
  mask = (masks.CausalMask((q_len, k_len), offset=k_len - q_len) if causal
          else masks.FullMask((q_len, k_len)))
  if window:  # query i sees keys i + offset - (window - 1) .. i + offset
    mask = masks.LocalMask((q_len, k_len), window_size=(window - 1, 0), offset=k_len - q_len)
  blocks = splash.BlockSizes(block_q=block_q, block_kv=block_k, block_kv_compute=block_k,
                             block_q_dkv=block_q, block_kv_dkv=block_k,
                             block_kv_dkv_compute=block_k, block_q_dq=block_q, block_kv_dq=block_k)
  make = splash.make_splash_mqa if shared_kv else splash.make_splash_mha
  kernel = make(masks.MultiHeadMask([mask] * heads), block_sizes=blocks, head_shards=1,
                q_seq_shards=1, interpret=interpret)
  return kernel, splash.SegmentIds


def splash_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                     q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True,
                     window: int = 0, chunk: int = 0, block: int = DEFAULT_BLOCK,
                     interpret: bool = False):
  """TPU splash attention (a Pallas kernel in jax.experimental that skips fully masked tiles),
  one batch row at a time; with fewer key/value heads (G) than query heads, its multi-query form
  for each group of H / G query heads. It takes no positional bias; a local window is its
  LocalMask, by token index as cuDNN's. `interpret` runs it on CPU (tests)."""
  del q_positions_BQ, k_positions_BK
  if bias_fn is not None:
    raise ValueError("splash attention takes no position bias")
  _index_window(window, chunk, causal, "splash")
  B, Q, H, K = q_BQHK.shape
  S, G = k_BKHK.shape[1], k_BKHK.shape[2]
  if not splash_fits(block, Q, S):
    raise ValueError(f"splash attention needs lengths that are multiples of the tile length "
                     f"(model.attention_block={block}, itself a multiple of 128); got {Q} queries "
                     f"and {S} keys. Use model.attention=blockwise")
  kernel, segment_ids = _splash_kernel(H // G if G < H else H, Q, S, causal, block, block,
                                       interpret, shared_kv=G < H, window=window)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)  # splash wants (heads, length, head_dim)
  q = heads_first(q_BQHK * jnp.asarray(K ** -0.5, q_BQHK.dtype))  # splash does not scale
  k, v = heads_first(k_BKHK), heads_first(v_BKHK)
  if q_segment_ids_BQ is None:
    one_row = lambda q, k, v, qs, ks: kernel(q, k, v)
  else:
    one_row = lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=segment_ids(qs, ks))
  if G < H:  # each key/value head with its group of query heads, (B, G, R, Q, K) and (B, G, S, K)
    q = q.reshape(B, G, H // G, Q, K)
    one_row = jax.vmap(one_row, in_axes=(0, 0, 0, None, None))
  o = jax.vmap(one_row)(q, k, v, q_segment_ids_BQ, k_segment_ids_BK)
  return o.reshape(B, H, Q, K).transpose(0, 2, 1, 3)
