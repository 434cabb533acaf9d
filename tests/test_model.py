"""Attention and the model: causality, document isolation, the dense reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcx import positions
from lcx.attention.library import dense_attention
from lcx.model import ModelConfig, Transformer, token_losses

SCHEMES = positions.available()  # every registered scheme


def _model(position, **overrides):
  cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64,
             max_len=32, position=position)
  cfg.update(overrides)
  return Transformer(ModelConfig(**cfg), rngs=nnx.Rngs(0))


def _naive_attention(q, k, v, bias, segments):
  """Loops over queries: softmax over the keys a query may see, in float64."""
  B, L, H, K = q.shape
  out = np.zeros_like(q, dtype=np.float64)
  for b in range(B):
    for h in range(H):
      for i in range(L):
        keys = [j for j in range(i + 1) if segments is None or segments[b, j] == segments[b, i]]
        s = np.array([q[b, i, h] @ k[b, j, h] / np.sqrt(K) + (bias[b, h, i, j] if bias is not None
                                                               else 0.0) for j in keys])
        p = np.exp(s - s.max())
        p /= p.sum()
        out[b, i, h] = sum(pj * v[b, j, h] for pj, j in zip(p, keys))
  return out


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_segments", [False, True])
def test_dense_attention_matches_naive(with_bias, with_segments):
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 7, 3, 4)).astype(np.float32) for _ in range(3))
  pos = np.tile(np.arange(7), (2, 1))
  segments = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 2, 2, 2, 3, 3, 3]]) if with_segments else None
  slopes = positions.alibi_slopes(3)
  bias_fn = (lambda qp, kp: positions.alibi_bias(qp, kp, slopes)) if with_bias else None
  out = dense_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), q_positions_BQ=pos,
                        k_positions_BK=pos, q_segment_ids_BQ=segments, k_segment_ids_BK=segments,
                        bias_fn=bias_fn)
  bias = np.asarray(bias_fn(pos, pos)) if with_bias else None
  np.testing.assert_allclose(out, _naive_attention(q, k, v, bias, segments), rtol=1e-4, atol=1e-5)


def test_no_gradient_flows_from_future_keys():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 6, 2, 4)), jnp.float32) for _ in range(3))
  pos = jnp.arange(6)[None]
  t = 2
  out_t = lambda k, v: dense_attention(q, k, v, q_positions_BQ=pos, k_positions_BK=pos)[0, t].sum()
  dk, dv = jax.grad(out_t, argnums=(0, 1))(k, v)
  assert np.all(np.asarray(dk[0, t + 1:]) == 0) and np.all(np.asarray(dv[0, t + 1:]) == 0)
  assert np.any(np.asarray(dv[0, : t + 1]) != 0)


@pytest.mark.parametrize("position", SCHEMES)
def test_model_is_causal(position):
  """Gradient of the loss at position t reaches no input embedding after t."""
  model = _model(position, tie_embeddings=False)  # tied, the table would feed the output too
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 64)
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
  graphdef, params = nnx.split(model)
  t = 5

  def loss_at_t(embedded):
    # Feed embeddings in directly by replacing the table with one row per input slot.
    p = jax.tree.map(lambda x: x, params)
    p["embedding"] = p["embedding"].replace(value=embedded.reshape(-1, embedded.shape[-1]))
    m = nnx.merge(graphdef, p)
    slots = jnp.arange(24).reshape(2, 12)
    logits = m(slots, pos)
    return logits[:, t].sum()

  embedded = params["embedding"][...][tokens]
  grad = jax.grad(loss_at_t)(embedded)
  assert np.all(np.asarray(grad[:, t + 1:]) == 0)
  assert np.any(np.asarray(grad[:, : t + 1]) != 0)


@pytest.mark.parametrize("position", SCHEMES)
def test_packed_documents_do_not_see_each_other(position):
  """With segment ids and restarted positions, a packed document scores as if alone."""
  model = _model(position)
  a = jax.random.randint(jax.random.key(1), (1, 5), 0, 64)
  b = jax.random.randint(jax.random.key(2), (1, 7), 0, 64)
  packed = jnp.concatenate([a, b], axis=1)
  pos = jnp.concatenate([jnp.arange(5), jnp.arange(7)])[None]
  segments = jnp.array([[1] * 5 + [2] * 7])
  together = model(packed, pos, segments)
  alone = model(b, jnp.arange(7)[None])
  np.testing.assert_allclose(together[:, 5:], alone, rtol=1e-5, atol=1e-5)
  mixed = model(packed, pos)  # without segment ids document b does see a
  assert not np.allclose(mixed[:, 5:], alone, atol=1e-4)


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("tie", [True, False])
def test_model_variants_and_dtypes(mlp, tie):
  model = _model("rope", mlp=mlp, tie_embeddings=tie, param_dtype="float32",
                 compute_dtype="bfloat16")
  tokens, targets = jax.random.randint(jax.random.key(3), (2, 2, 8), 0, 64)
  logits = model(tokens, jnp.broadcast_to(jnp.arange(8), (2, 8)))
  assert logits.shape == (2, 8, 64) and logits.dtype == jnp.float32
  assert model.blocks[0].mlp.w_up[...].dtype == jnp.float32
  assert hasattr(model, "head") != tie
  # At init the loss on unrelated targets is close to that of a uniform guess.
  assert abs(float(token_losses(logits, targets).mean()) - np.log(64)) < 1.0


@pytest.mark.parametrize("position", SCHEMES)
def test_qk_norm_normalizes_each_head_before_the_scheme(position):
  """With model.qk_norm, queries and keys enter the scheme as RMSNorm(x W) * scale per head: the
  logits do not change when W_q and W_k are scaled (they do without it), and the normalized
  heads are the transcribed formula."""
  tokens = jax.random.randint(jax.random.key(4), (2, 12), 0, 64)
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))

  def logits_with_scaled_qk(qk_norm, factor):
    model = _model(position, qk_norm=qk_norm)
    for block in model.blocks:
      block.attn.wq[...] = block.attn.wq[...] * factor
      block.attn.wk[...] = block.attn.wk[...] * factor
    return np.asarray(model(tokens, pos))

  np.testing.assert_allclose(logits_with_scaled_qk(True, 7.0), logits_with_scaled_qk(True, 1.0),
                             rtol=1e-4, atol=1e-4)
  assert not np.allclose(logits_with_scaled_qk(False, 7.0), logits_with_scaled_qk(False, 1.0),
                         rtol=1e-4, atol=1e-4)
  model = _model(position, qk_norm=True)
  attn = model.blocks[0].attn
  attn.q_norm.scale[...] = jnp.linspace(0.5, 2.0, 8)
  x = jax.random.normal(jax.random.key(5), (2, 12, 32))
  q = np.einsum("bld,dhk->blhk", np.asarray(x), np.asarray(attn.wq[...]))
  expected = q / np.sqrt((q ** 2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 2.0, 8)

  class Identity:  # the scheme's rotation left out, to see the normalized heads themselves
    rotate = staticmethod(lambda q, k, positions, length: (q, k))

  q_normed, _, _ = attn._qkv(x, pos, Identity())
  np.testing.assert_allclose(q_normed, expected, rtol=1e-5, atol=1e-5)
  assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == sum(
      p.size for p in jax.tree.leaves(nnx.state(_model(position), nnx.Param))) + 2 * 2 * 8
