"""Memory mechanisms (lcx.memory) against straightforward references: segments with a carried
XL cache equal full attention where the cache holds everything, no gradient crosses into the
cache, segments never see another document's memory, and the config refuses what cannot work."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcx import memory, positions
from lcx.config import ConfigError, resolve
from lcx.model import ModelConfig, Transformer, token_losses
from tests.conftest import ROOT  # noqa: F401  (puts the repository on sys.path)
from configs import pretrain

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64,
                   max_len=48)


def _model(**fields) -> Transformer:
  return Transformer(dataclasses.replace(BASE, **fields), rngs=nnx.Rngs(0))


def _stream(length=48, batch=2):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, length), 0, 64)
  return tokens, jnp.broadcast_to(jnp.arange(length), (batch, length))


# A rotation (with the layers looped and scanned), a fixed bias, a learned one, absolute positions.
# FoX: the cache keeps each key's log forget gate, the bias sums them across the segments.
@pytest.mark.parametrize("position, scan", [("rope", False), ("rope", True), ("alibi", False),
                                            ("t5", False), ("learned", False), ("fox", True)])
def test_xl_over_segments_equals_full_attention_while_the_cache_holds_the_past(position, scan):
  """Two segments of 16 with a 16-token cache (and three with a 32-token one): every query sees
  every earlier token, as in the plain model, so the logits are the same."""
  plain = _model(position=position)
  tokens, pos = _stream()
  for length, cache in ((32, 16), (48, 32)):
    xl = _model(position=position, memory="xl", segment_len=16, scan_layers=scan,
                memory_options=memory.option_types()["xl"](length=cache))
    np.testing.assert_allclose(xl(tokens[:, :length], pos[:, :length]),
                               plain(tokens[:, :length], pos[:, :length]), atol=2e-5)


def test_xl_with_a_short_cache_forgets_what_left_it():
  """Three segments of 16, a cache of 16: the third segment no longer sees the first, so its
  logits differ from full attention's, while the first two segments' do not."""
  tokens, pos = _stream()
  full = _model()(tokens, pos)
  xl = _model(memory="xl", segment_len=16)(tokens, pos)
  np.testing.assert_allclose(xl[:, :32], full[:, :32], atol=2e-5)
  assert float(jnp.abs(xl[:, 32:] - full[:, 32:]).max()) > 1e-2


def test_no_gradient_crosses_into_the_xl_cache():
  """The loss of the second segment through XL's cache: the embeddings of tokens seen only in
  the first segment get no gradient (the cache is a stop-gradient), unlike full attention."""
  first = jnp.tile(jnp.arange(16), (2, 1))  # tokens 0-15, then 16-63 only
  second = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 16, 64)
  tokens, pos = jnp.concatenate([first, second], axis=1), _stream(32)[1]

  def embedding_grad(model):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens, pos)
      return token_losses(logits[:, 16:-1], tokens[:, 17:]).mean()
    return jax.grad(loss)(params)["embedding"][...]

  # Untied embeddings: the output layer would otherwise reach every row.
  xl = embedding_grad(_model(memory="xl", segment_len=16, tie_embeddings=False))
  full = embedding_grad(_model(tie_embeddings=False))
  assert float(jnp.abs(xl[:16]).max()) == 0.0
  assert float(jnp.abs(full[:16]).max()) > 1e-6


def test_segments_do_not_see_another_documents_memory():
  """A document that starts at the second segment (positions restart, a new segment id): its
  logits through XL are those of the document alone, as if nothing came before."""
  tokens, pos = _stream(32)
  pos = pos.at[:, 16:].add(-16)
  segment_ids = jnp.concatenate([jnp.ones((2, 16), jnp.int32), 2 * jnp.ones((2, 16), jnp.int32)],
                                axis=1)
  xl = _model(memory="xl", segment_len=16)
  np.testing.assert_allclose(xl(tokens, pos, segment_ids)[:, 16:],
                             _model()(tokens[:, 16:], pos[:, 16:]), atol=2e-5)


def test_memory_none_with_segments_is_the_fixed_window_baseline():
  """memory=none with segment_len: each segment attends within itself only; one segment of the
  whole length computes what the plain model (segment_len 0) does."""
  tokens, pos = _stream(32)
  plain, windowed = _model(), _model(segment_len=16)
  np.testing.assert_allclose(windowed(tokens, pos)[:, 16:], plain(tokens[:, 16:], pos[:, 16:]),
                             atol=2e-5)
  np.testing.assert_allclose(_model(segment_len=32)(tokens, pos), plain(tokens, pos), atol=2e-5)


@pytest.mark.parametrize("mechanism", ["xl", "knn", "rmt"])
def test_memory_reset_starts_every_segment_from_the_initial_state(mechanism):
  """The ablation: with memory_reset the same weights see no memory. XL (no parameters of its
  own) then computes the window without memory; for every mechanism each segment's output is
  that of the segment run alone from the initial state."""
  tokens, pos = _stream(48)
  reset = _model(memory=mechanism, segment_len=16, memory_reset=True)
  logits = reset(tokens, pos)
  if mechanism == "xl":
    np.testing.assert_allclose(logits, _model(segment_len=16)(tokens, pos), atol=2e-5)
  for start in (16, 32):
    np.testing.assert_allclose(logits[:, start:start + 16],
                               reset(tokens[:, start:start + 16], pos[:, start:start + 16]),
                               atol=2e-5)
  kept = _model(memory=mechanism, segment_len=16)(tokens, pos)
  np.testing.assert_allclose(kept[:, :16], logits[:, :16], atol=2e-5)  # the first: no memory yet
  assert np.abs(kept[:, 16:] - logits[:, 16:]).max() > 1e-3  # later: the memory changes them


def test_a_length_that_is_not_a_multiple_of_the_segment_is_padded_and_cut():
  tokens, pos = _stream(40)
  xl = _model(memory="xl", segment_len=16, memory_options=memory.option_types()["xl"](length=32))
  np.testing.assert_allclose(xl(tokens, pos), _model()(tokens, pos), atol=2e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(memory="xl"), "memory='xl' carries a state between segments; set "
                        "config.model.segment_len"),
    (dict(memory="kv"), "config.model.memory='kv' is not allowed; allowed: compressive, knn, none, rmt, xl"),
    (dict(segment_len=1000), r"segment_len=1000 must be in \[0, data.seq_len=128\]"),
    (dict(memory="xl", segment_len=32, xl=dict(length=-1)), "model.xl.length=-1 must be >= 0"),
    (dict(memory="compressive", segment_len=32, compressive=dict(rate=0)),
     "compressive.rate=0 must be a positive integer"),
    (dict(memory="compressive", segment_len=32, compressive=dict(compression="max")),
     "compressive.compression='max' is unknown; allowed: mean, conv"),
    (dict(memory="knn", segment_len=32, knn=dict(layer=2)),
     "knn.layer=2 is not a layer of the model; allowed: -2 to 1"),
    (dict(memory="knn", segment_len=32, scan_layers=True),
     "scan_layers=true cannot run knn"),
    (dict(memory="rmt", segment_len=32, rmt=dict(tokens=0)),
     "rmt.tokens=0 must be a positive integer"),
    (dict(memory_reset=True), "memory_reset=true wipes the memory between segments, and this "
                              "model has none: set config.model.segment_len"),
])
def test_the_config_refuses_a_memory_that_cannot_work(fields, message):
  c = pretrain.get_config("tiny")
  c.unlock()
  for name, value in fields.items():
    if isinstance(value, dict):
      c.model[name].update(value)
    else:
      c.model[name] = value
  with pytest.raises(ConfigError, match=message):
    resolve(c, 1)


def _compressive(**options):
  return memory.option_types()["compressive"](**options)


def test_compressive_evicts_the_oldest_entries_into_mean_pooled_ones_in_order():
  """Segments of 4, a memory of 4, rate 2: each segment pushes the previous one out of the
  memory into two compressed entries (mean keys and positions; a pair across two documents is
  masked), oldest first."""
  cfg = memory.MemoryConfig(n_layers=1, n_heads=1, head_dim=2, segment_len=4, gate_heads=1,
                            options=_compressive(length=4, compressed_length=4, rate=2))
  mechanism = memory.make("compressive", cfg, rngs=nnx.Rngs(0))
  state = mechanism.init_layers(1)[0]
  ids = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 2], [2, 2, 2, 2]])
  for i in range(3):
    pos = jnp.arange(4 * i, 4 * i + 4)[None]
    kv = jnp.broadcast_to(pos[..., None, None], (1, 4, 1, 2)).astype(jnp.float32)
    gates = -0.1 * pos[..., None].astype(jnp.float32)  # log forget gates, kept with the keys
    state = mechanism.update(state, kv, -kv, pos, ids[i][None], 0, log_gates_BCH=gates)
  np.testing.assert_allclose(state.memory.log_gates_BSH[0, :, 0], [-0.8, -0.9, -1.0, -1.1])
  # a compressed entry decays as the last of its tokens: it keeps the sum of their gates
  np.testing.assert_allclose(state.compressed.log_gates_BSH[0, :, 0], [-0.1, -0.5, -0.9, -1.3],
                             rtol=1e-6)
  np.testing.assert_array_equal(state.memory.positions_BS[0], [8, 9, 10, 11])
  compressed = state.compressed
  np.testing.assert_allclose(compressed.k_BSHK[0, :, 0, 0], [0.5, 2.5, 4.5, 6.5])
  np.testing.assert_allclose(compressed.v_BSHK[0, :, 0, 1], [-0.5, -2.5, -4.5, -6.5])
  np.testing.assert_array_equal(compressed.positions_BS[0], [0, 2, 4, 6])
  np.testing.assert_array_equal(compressed.segment_ids_BS[0], [1, 1, 1, 0])  # 6, 7: two docs


@pytest.mark.parametrize("compression, position", [("mean", "none"), ("conv", "none"),
                                                   ("mean", "fox")])
def test_compressive_at_rate_one_is_xl_with_both_memories(compression, position):
  """Rate 1 compresses nothing away (and the conv starts as the mean): a memory of 16 plus 16
  compressed entries hold the last 32 tokens, so three segments of 16 give full attention."""
  tokens, pos = _stream()
  model = _model(memory="compressive", segment_len=16, position=position,
                 memory_options=_compressive(length=16, compressed_length=16, rate=1,
                                             compression=compression))
  np.testing.assert_allclose(model(tokens, pos), _model(position=position)(tokens, pos),
                             atol=2e-5)


def test_the_learned_compression_gets_a_gradient():
  tokens, pos = _stream()
  model = _model(memory="compressive", segment_len=16,
                 memory_options=_compressive(compression="conv"))
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    return token_losses(nnx.merge(graphdef, params)(tokens, pos)[:, :-1], tokens[:, 1:]).mean()
  assert float(jnp.abs(jax.grad(loss)(params)["memory"]["conv"][...]).max()) > 1e-6


def _knn_reference(q, mem_k, mem_v, mem_ids, ids, k):
  """Brute force in numpy: each query's k best same-document entries, softmax, weighted values."""
  B, C, H, K = q.shape
  out, found = np.zeros(q.shape), np.zeros((B, C, H), bool)
  for b, c, h in np.ndindex(B, C, H):
    valid = np.flatnonzero(mem_ids[b] == ids[b, c])
    if not len(valid):
      continue
    scores = mem_k[b, valid, h] @ q[b, c, h] / np.sqrt(K)
    best = valid[np.argsort(-scores)[:k]]
    top = np.sort(scores)[::-1][:k]
    p = np.exp(top - top.max())
    out[b, c, h] = (p / p.sum()) @ mem_v[b, best, h]
    found[b, c, h] = True
  return out, found


def test_knn_retrieves_the_exact_top_k_of_the_same_document():
  from lcx.memory.knn import retrieve
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
  mem_k, mem_v = (rng.normal(size=(2, 12, 3, 4)).astype(np.float32) for _ in range(2))
  mem_ids = np.array([[0] * 2 + [1] * 6 + [2] * 4, [1] * 12])  # 0: empty slots
  ids = np.array([[1, 1, 2, 2, 3], [1] * 5])  # document 3 has nothing in memory
  memory_ = memory.KVCache(jnp.asarray(mem_k), jnp.asarray(mem_v), jnp.zeros((2, 12), jnp.int32),
                           jnp.asarray(mem_ids, jnp.int32))
  got, found = retrieve(jnp.asarray(q), memory_, jnp.asarray(ids, jnp.int32), k=3)
  expected, expected_found = _knn_reference(q, mem_k, mem_v, mem_ids, ids, k=3)
  np.testing.assert_array_equal(found, expected_found)
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("position", ["none", "fox"])  # FoX: its bias on the local keys only
def test_knn_mixes_retrieval_and_local_attention_through_its_gate(position):
  """The second segment's memory layer: g * retrieved + (1 - g) * local, g = sigmoid(gate); a
  gate driven to -inf leaves the local attention (the memory-free windowed model)."""
  tokens, pos = _stream(32)
  options = memory.option_types()["knn"](size=16, k=4)
  knn = _model(memory="knn", segment_len=16, memory_options=options, position=position)
  windowed = _model(segment_len=16, position=position)
  first = np.asarray(windowed(tokens, pos))
  np.testing.assert_allclose(knn(tokens, pos)[:, :16], first[:, :16], atol=2e-5)  # no memory yet
  assert float(jnp.abs(knn(tokens, pos)[:, 16:] - first[:, 16:]).max()) > 1e-3
  knn.memory.gate[...] = jnp.full_like(knn.memory.gate[...], -1e4)
  np.testing.assert_allclose(knn(tokens, pos), first, atol=2e-5)


def test_knn_gate_learns_and_no_gradient_enters_its_memory():
  """The second segment's loss: the gate gets a gradient; tokens seen only in the first segment
  (whose keys and values are in the memory) get none."""
  first = jnp.tile(jnp.arange(16), (2, 1))
  tokens = jnp.concatenate([first, jax.random.randint(jax.random.PRNGKey(2), (2, 16), 16, 64)], 1)
  pos = _stream(32)[1]
  knn = _model(memory="knn", segment_len=16, tie_embeddings=False,
               memory_options=memory.option_types()["knn"](size=16, k=4))
  graphdef, params = nnx.split(knn, nnx.Param)

  def loss(params):
    return token_losses(nnx.merge(graphdef, params)(tokens, pos)[:, 16:-1], tokens[:, 17:]).mean()
  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads["memory"]["gate"][...]).max()) > 1e-6
  assert float(jnp.abs(grads["embedding"][...][:16]).max()) == 0.0


# FoX: the memory tokens make gates too (starting near 1, or the handoffs are mostly forgotten)
@pytest.mark.parametrize("position", ["none", "fox"])
def test_rmt_carries_the_first_segment_to_the_third_and_backpropagates_through_it(position):
  """Recurrent memory tokens: the third segment's logits depend on a token of the first (through
  two memory handoffs), its loss sends a gradient back to that token's embedding and to the
  learned initial memory; with memory=none neither happens."""
  pos = _stream()[1]
  first = jnp.tile(jnp.arange(16), (2, 1))  # tokens 0-15 in the first segment only
  tokens = jnp.concatenate([first, jax.random.randint(jax.random.PRNGKey(2), (2, 32), 16, 64)], 1)
  changed = tokens.at[:, 3].set(4)
  options = memory.option_types()["rmt"](tokens=4)
  fox = positions.FoxOptions(decay_time_min=1e3, decay_time_max=1e3)
  rmt = _model(memory="rmt", segment_len=16, tie_embeddings=False, memory_options=options,
               position=position, position_options=fox if position == "fox" else None)
  assert float(jnp.abs(rmt(tokens, pos)[:, 32:] - rmt(changed, pos)[:, 32:]).max()) > 1e-4
  windowed = _model(segment_len=16, position=position)
  np.testing.assert_allclose(windowed(tokens, pos)[:, 32:], windowed(changed, pos)[:, 32:])
  graphdef, params = nnx.split(rmt, nnx.Param)

  def loss(params):
    return token_losses(nnx.merge(graphdef, params)(tokens, pos)[:, 32:-1], tokens[:, 33:]).mean()
  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads["embedding"][...][:16]).max()) > 0
  assert float(jnp.abs(grads["memory"]["initial"][...]).max()) > 0


def test_the_flop_count_of_a_run_in_segments_counts_its_window_and_memory():
  """Attention FLOPs follow what a query sees: the segment (causal half in the causal count) and
  its memory's keys (all visible), not the training length."""
  from lcx.metrics import flops_per_token
  cfg = ModelConfig(vocab_size=320, n_layers=2, n_heads=4, head_dim=16, segment_len=64,
                    max_len=256)
  width = 2 * 64  # n_layers * d_attn
  plain = dataclasses.replace(cfg, segment_len=0)
  assert plain.attention_context(256) == (256, 0.0)
  assert cfg.attention_context(256) == (64, 0.0)
  options = memory.option_types()
  xl = dataclasses.replace(cfg, memory="xl", memory_options=options["xl"](length=96))
  assert xl.attention_context(256) == (64, 96.0)
  assert dataclasses.replace(cfg, memory="xl").attention_context(256) == (64, 64.0)  # default M = L
  knn = dataclasses.replace(cfg, memory="knn", memory_options=options["knn"](size=192, k=16))
  assert knn.attention_context(256) == (64, (192 + 16) / 2)
  compressive = dataclasses.replace(cfg, memory="compressive")
  assert compressive.attention_context(256) == (64, 128.0)
  assert dataclasses.replace(cfg, memory="rmt").attention_context(256) == (64, 8.0)
  assert flops_per_token(1000, 2, 64, 64, memory_keys=96.0) == 6000 + 12 * width * (64 + 96)
  assert flops_per_token(1000, 2, 64, 64, causal=True, memory_keys=96.0) == (
      6000 + width * (6 * 64 + 12 * 96))
