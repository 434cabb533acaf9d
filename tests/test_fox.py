"""The Forgetting Transformer (model.position=fox): its bias against a direct transcription of the
paper's formula (an explicit per-document cumulative sum and an L x L bias), a constant gate as
ALiBi, the initial gates, every kernel that takes it against dense through a whole model (values
and the gradients of every parameter, the gate's included), and the config's refusals. Decoding
with a KV cache and sharded training are the generic tests' (test_decode, test_train: every
registered scheme), the memories' test_memory's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from lcx import positions
from lcx.attention.library import dense_attention
from lcx.config import ConfigError, resolve
from lcx.model import ModelConfig, Transformer, token_losses


def _explicit_bias(log_gates_LH, segment_ids_L):
  """(H, L, L) float64: the sum of the log gates after j up to i, within one document."""
  L, H = log_gates_LH.shape
  bias = np.zeros((H, L, L))
  for i in range(L):
    for j in range(i + 1):
      if segment_ids_L[i] == segment_ids_L[j]:
        bias[:, i, j] = log_gates_LH[j + 1:i + 1].sum(axis=0)
  return bias


def test_the_bias_is_the_papers_sum_of_log_gates_within_each_document():
  B, L, D, H = 2, 23, 16, 3
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (B, L, D))
  w, b = 0.5 * jax.random.normal(keys[1], (D, H)), jax.random.normal(keys[2], (H,))
  gates = positions.fox_log_gates(x, w, b)
  f = 1 / (1 + np.exp(-(np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b))))
  np.testing.assert_allclose(gates, np.log(f), rtol=1e-5, atol=1e-6)
  seg = jnp.asarray(np.stack([np.arange(L) >= 9, np.arange(L) >= 17]).astype(np.int32) + 1)
  a, c = positions.gate_row_bias(gates, seg, q_len=L)
  np.testing.assert_array_equal(a, c)
  for row in range(B):
    want = _explicit_bias(np.log(f[row]), np.asarray(seg[row]))
    got = np.asarray(c[row])[:, :, None] - np.asarray(c[row])[:, None, :]
    mask = np.tril(np.asarray(seg[row])[:, None] == np.asarray(seg[row])[None, :])
    np.testing.assert_allclose(np.where(mask, got, 0), want, rtol=1e-5, atol=1e-5)
  # queries at the end of longer keys (a cache): the keys' sums, the queries' the last of them
  a_q, _ = positions.gate_row_bias(gates, seg, q_len=5)
  np.testing.assert_array_equal(a_q, c[:, :, L - 5:])


def test_a_constant_gate_is_alibi_with_slope_minus_log_f():
  B, L, H, K = 2, 19, 4, 8
  q, k, v = (jax.random.normal(key, (B, L, H, K)) for key in jax.random.split(jax.random.key(1), 3))
  slopes = positions.alibi_slopes(H)
  gates = jnp.broadcast_to(-slopes, (B, L, H))  # log f = -slope
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  kw = dict(q_positions_BQ=pos, k_positions_BK=pos)
  fox = dense_attention(q, k, v, row_bias=positions.gate_row_bias(gates, jnp.ones((B, L)), L), **kw)
  alibi = dense_attention(q, k, v, bias_fn=positions.LinearBias(slopes), **kw)
  np.testing.assert_allclose(fox, alibi, rtol=1e-5, atol=1e-5)


def test_decay_times_set_the_initial_gates():
  b = positions.gate_bias_init(4, 2.0, 128.0)
  times = -1 / np.log(1 / (1 + np.exp(-b.astype(np.float64))))
  np.testing.assert_allclose(times, [2.0, 8.0, 32.0, 128.0], rtol=1e-4)
  np.testing.assert_array_equal(positions.gate_bias_init(3, 0.0, 0.0), 0.0)
  model = _model("dense", decay=(2.0, 128.0))
  np.testing.assert_allclose(model.position.gate_bias[...][1], b, rtol=1e-6)


def _model(attention, gqa=False, decay=(0.0, 0.0), gate="data"):
  options = positions.FoxOptions(gate=gate, decay_time_min=decay[0], decay_time_max=decay[1])
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64,
                    n_kv_heads=2 if gqa else 0, position="fox", position_options=options,
                    max_len=64, attention=attention, attention_block=8)
  return Transformer(cfg, rngs=nnx.Rngs(0))


def _loss_and_grads(model, tokens, seg):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)

  def loss(params):
    m = nnx.merge(graphdef, params, rest)
    return token_losses(m(tokens[:, :-1], pos[:, :-1], seg[:, :-1]), tokens[:, 1:]).mean()

  return jax.jit(jax.value_and_grad(loss))(params)


# (test_attention_kernels runs every scheme's plain model through every kernel besides)
@pytest.mark.parametrize("attention, gqa, gate", [("blockwise", True, "bias"),
                                                  ("pallas", True, "data")])
def test_every_kernel_matches_dense_in_a_model_values_and_every_gradient(attention, gqa, gate):
  tokens = jax.random.randint(jax.random.key(2), (2, 30), 0, 64)
  seg = jnp.asarray(np.stack([np.arange(30) >= 11, np.arange(30) >= 20]).astype(np.int32) + 1)
  value, grads = _loss_and_grads(_model("dense", gqa, gate=gate), tokens, seg)
  value_k, grads_k = _loss_and_grads(_model(attention, gqa, gate=gate), tokens, seg)
  np.testing.assert_allclose(value_k, value, rtol=1e-5)
  flat, flat_k = (dict(jax.tree_util.tree_leaves_with_path(g)) for g in (grads, grads_k))
  gate_grads = [path for path in flat if "gate_" in jax.tree_util.keystr(path)]
  assert len(gate_grads) == (2 if gate == "data" else 1)
  for path, g in flat.items():
    np.testing.assert_allclose(flat_k[path], g, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  for path in gate_grads:  # the gate learns (through the keys' side: see lcx.attention)
    assert np.abs(np.asarray(flat[path])).max() > 1e-4


def test_the_config_refuses_what_fox_cannot_run_with():
  c = pretrain.get_config("tiny")
  c.model.position = "fox"
  assert resolve(c, 1).model.fox.gate == "data"
  c.model.attention = "native"
  with pytest.raises(ConfigError, match=r"model.attention='native' cannot take this position "
                                        r"scheme's bias: .*use blockwise"):
    resolve(c, 1)
  c.model.attention = "auto"
  c.model.fox.decay_time_min = 4.0
  with pytest.raises(ConfigError, match=r"model.fox.decay_time_min=4.0 and decay_time_max=0.0 "
                                        r"must both be 0"):
    resolve(c, 1)
  c.model.fox.decay_time_min, c.model.fox.gate = 0.0, "constant"
  with pytest.raises(ConfigError, match=r"model.fox.gate='constant' is unknown; allowed: data, "
                                        "bias"):
    resolve(c, 1)


@pytest.mark.parametrize("attention", ["dense", "blockwise"])
def test_no_token_sees_a_later_one_through_its_gates(attention):
  """The gates are made from each token's own input, and the bias sums those up to the query: a
  change to token t leaves every logit before t as it was (and changes those from t on)."""
  model = _model(attention)
  tokens = jax.random.randint(jax.random.key(3), (2, 30), 0, 64)
  pos = jnp.broadcast_to(jnp.arange(30), tokens.shape)
  changed = tokens.at[:, 17].set((tokens[:, 17] + 1) % 64)
  before, after = model(tokens, pos), model(changed, pos)
  np.testing.assert_array_equal(before[:, :17], after[:, :17])
  assert float(jnp.abs(before[:, 17:] - after[:, 17:]).max()) > 1e-4


def test_one_document_a_row_is_the_plain_cumulative_sum():
  gates = -jax.random.uniform(jax.random.key(4), (2, 9, 3))
  a, b = positions.gate_row_bias(gates, None, q_len=4)
  a_one, b_one = positions.gate_row_bias(gates, jnp.ones((2, 9), jnp.int32), q_len=4)
  np.testing.assert_allclose(b, b_one, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(a, a_one, rtol=1e-6, atol=1e-6)
