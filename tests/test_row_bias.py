"""A bias made of two per-row vectors (row_bias: the score of (i, j) gets a_i - b_j, as the
Forgetting Transformer's data-dependent bias does): the dense reference against an explicit
L x L bias, and the tiled kernels against dense, values and the gradients of q, k, v and both
vectors: blockwise through its unrolled and while-loop paths, the Pallas kernel in both
interpreters and lowered for a TPU and a GPU."""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from lcx import positions
from lcx.attention.blockwise import blockwise_attention
from lcx.attention.library import dense_attention
from lcx.attention.pallas import pallas_attention


def _inputs(Q=37, S=37, H=4, G=2, K=8, packed=True, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(keys[0], (2, Q, H, K))
  k, v = (jax.random.normal(kk, (2, S, G, K)) for kk in keys[1:3])
  # FoX's shape: a = b = c, a cumulative sum of log forget gates (<= 0, falling along the row)
  c = jnp.cumsum(jax.nn.log_sigmoid(2.0 + jax.random.normal(keys[3], (2, H, S))), axis=-1)
  a, b = c[..., S - Q:], c + 0.1 * jax.random.normal(keys[4], (2, H, S))  # a != b: both paths
  k_pos = jnp.broadcast_to(jnp.arange(S), (2, S))
  seg = jnp.asarray(np.stack([np.arange(S) >= 20, np.arange(S) >= 9]).astype(np.int32))
  kw = dict(q_positions_BQ=k_pos[:, S - Q:], k_positions_BK=k_pos)
  if packed:
    kw.update(q_segment_ids_BQ=seg[:, S - Q:], k_segment_ids_BK=seg)
  return (q, k, v, a, b), kw


def _loss(fn, kw):
  def loss(q, k, v, a, b):
    out = fn(q, k, v, row_bias=(a, b), **kw)
    return (out * jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)).sum()
  return loss


def test_dense_row_bias_is_the_explicit_difference_of_the_two_vectors():
  (q, k, v, a, b), kw = _inputs(G=4)
  explicit = lambda qp, kp: a[:, :, :, None] - b[:, :, None, :]  # (B, H, Q, K), L x L
  np.testing.assert_allclose(dense_attention(q, k, v, row_bias=(a, b), **kw),
                             dense_attention(q, k, v, bias_fn=explicit, **kw), rtol=1e-6,
                             atol=1e-6)
  # and it changes the result (a bias that is not constant along a row)
  assert not np.allclose(dense_attention(q, k, v, row_bias=(a, b), **kw),
                         dense_attention(q, k, v, **kw), atol=1e-3)


@pytest.mark.parametrize("block", [16, 4])  # 4: 100 tiles, past the unrolled loops
@pytest.mark.parametrize("case", ["packed", "cache", "alibi+window"])
def test_blockwise_row_bias_equals_dense_values_and_all_gradients(block, case):
  Q = 13 if case == "cache" else 37  # queries at the end of longer keys (a KV cache's call)
  args, kw = _inputs(Q=Q, packed=case != "cache")
  if case == "alibi+window":  # with a position bias and a local window besides
    slopes = positions.alibi_slopes(4)
    kw.update(bias_fn=lambda qp, kp: positions.alibi_bias(qp, kp, slopes), window=11)
  tiled = lambda *a, **kw: blockwise_attention(*a, block_q=block, block_k=block, **kw)
  want = jax.value_and_grad(_loss(dense_attention, kw), argnums=range(5))(*args)
  got = jax.value_and_grad(_loss(tiled, kw), argnums=range(5))(*args)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for name, g_, w in zip("qkvab", got[1], want[1]):
    np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-5, err_msg=name)
  # a softmax row is blind to its own shift: a's gradient (a row sum of dS) is zero up to
  # rounding, and FoX's gate learns through b, the keys' side
  assert np.abs(want[1][3]).max() < 1e-5 < 1e-2 < np.abs(want[1][4]).max()


@pytest.mark.parametrize("tpu", [False, True])
def test_pallas_row_bias_equals_dense_in_both_interpreters(tpu):
  """Packed documents, grouped heads, an uneven length (padded tiles) and a window."""
  args, kw = _inputs(Q=21, S=37)
  kw["window"] = 20
  tiled = lambda *a, **kw: pallas_attention(*a, block_q=16, block_k=16, **kw)
  want = jax.value_and_grad(_loss(dense_attention, kw), argnums=range(5))(*args)
  with pltpu.force_tpu_interpret_mode() if tpu else contextlib.nullcontext():
    got = jax.value_and_grad(_loss(tiled, kw), argnums=range(5))(*args)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for name, g_, w in zip("qkvab", got[1], want[1]):
    np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_the_pallas_row_bias_lowers_for_tpu_and_gpu(platform):
  H, K, Q, S = 4, 64, 200, 300
  q, k, v = (jnp.zeros((2, n, H, K), jnp.bfloat16) for n in (Q, S, S))
  a, b = jnp.zeros((2, H, Q)), jnp.zeros((2, H, S))
  k_pos = jnp.broadcast_to(jnp.arange(S), (2, S))

  def loss(q, k, v, a, b):
    out = pallas_attention(q, k, v, q_positions_BQ=k_pos[:, S - Q:], k_positions_BK=k_pos,
                           row_bias=(a, b), interpret=False,
                           platform="gpu" if platform == "cuda" else platform)
    return out.astype(jnp.float32).sum()

  calls = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
  exported = jax.export.export(
      jax.jit(jax.grad(loss, argnums=range(5))), platforms=(platform,),
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(calls["cuda"])])(q, k, v, a, b)
  assert exported.mlir_module().count(calls[platform]) == 3  # forward, dK/dV/db, dQ/da
