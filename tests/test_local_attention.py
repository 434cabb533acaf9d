"""Local attention (a sliding window or chunks): every kernel that takes it against the dense
reference, values and gradients, and that the tiled ones visit only the tiles within reach."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcx.attention import library
from lcx.attention.blockwise import blockwise_attention
from lcx.attention.library import dense_attention, local_mask
from lcx.attention.native import native_attention
from lcx.attention.tiles import visible_tiles


def _inputs(L=96, H=4, G=2, K=8, packed=False, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (2, L, H, K))
  k = jax.random.normal(ks[1], (2, L, G, K))
  v = jax.random.normal(ks[2], (2, L, G, K))
  if packed:  # two documents a row, positions restarting at each
    cut = np.array([37, 60])
    seg = np.stack([np.where(np.arange(L) < c, 1, 2) for c in cut]).astype(np.int32)
    pos = np.stack([np.where(np.arange(L) < c, np.arange(L), np.arange(L) - c)
                    for c in cut]).astype(np.int32)
    return q, k, v, jnp.asarray(pos), jnp.asarray(seg)
  return q, k, v, jnp.broadcast_to(jnp.arange(L), (2, L)), None


TILED = {"blockwise": blockwise_attention, "native": native_attention}


@pytest.mark.parametrize("window,chunk", [(16, 0), (1, 0), (40, 0), (0, 32), (0, 20)])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kernel,block", [("blockwise", 16), ("blockwise", 8), ("native", 16)])
def test_tiled_local_attention_equals_dense(window, chunk, packed, kernel, block):
  """blockwise (block 8: 144 tiles, past its unrolled loops) and the native CPU kernel."""
  q, k, v, pos, seg = _inputs(packed=packed)
  kw = dict(q_positions_BQ=pos, k_positions_BK=pos, q_segment_ids_BQ=seg, k_segment_ids_BK=seg,
            window=window, chunk=chunk)

  def loss(fn, q, k, v):
    o = fn(q, k, v, **kw)
    return (o * jnp.cos(jnp.arange(o.size).reshape(o.shape))).sum(), o

  dense = jax.value_and_grad(lambda *a: loss(dense_attention, *a), argnums=(0, 1, 2),
                             has_aux=True)(q, k, v)
  tiled_fn = lambda q, k, v, **kw: TILED[kernel](q, k, v, block_q=block, block_k=block, **kw)
  tiled = jax.value_and_grad(lambda *a: loss(tiled_fn, *a), argnums=(0, 1, 2),
                             has_aux=True)(q, k, v)
  np.testing.assert_allclose(tiled[0][1], dense[0][1], rtol=1e-5, atol=1e-5)
  for a, b in zip(tiled[1], dense[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # the window changes the result: it is not full causal attention
  full = dense_attention(q, k, v, **{**kw, "window": 0, "chunk": 0})
  assert not np.allclose(dense[0][1], full, atol=1e-4)


@pytest.mark.parametrize("tpu", [False, True])
@pytest.mark.parametrize("window,chunk", [(20, 0), (0, 32)])
def test_pallas_local_attention_equals_dense(window, chunk, tpu):
  """The Pallas kernel, interpreted here (Pallas' generic interpreter, and the TPU one that
  simulates Mosaic's memory spaces): packed documents, grouped heads, values and gradients."""
  import contextlib
  from jax.experimental.pallas import tpu as pltpu
  from lcx.attention.pallas import pallas_attention
  with pltpu.force_tpu_interpret_mode() if tpu else contextlib.nullcontext():
    _pallas_equals_dense(pallas_attention, window, chunk)


def _pallas_equals_dense(pallas_attention, window, chunk):
  q, k, v, pos, seg = _inputs(L=64, packed=True)
  kw = dict(q_positions_BQ=pos, k_positions_BK=pos, q_segment_ids_BQ=seg, k_segment_ids_BK=seg,
            window=window, chunk=chunk)
  loss = lambda fn: lambda q, k, v: (fn(q, k, v, **kw) ** 2).sum()
  tiled = lambda q, k, v, **kw: pallas_attention(q, k, v, block_q=16, block_k=16, **kw)
  np.testing.assert_allclose(tiled(q, k, v, **kw), dense_attention(q, k, v, **kw), rtol=1e-5,
                             atol=1e-5)
  for a, b in zip(jax.grad(loss(tiled), argnums=(0, 1, 2))(q, k, v),
                  jax.grad(loss(dense_attention), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_window_visits_tiles_linear_in_length():
  counts = [len(visible_tiles(n, n, 16, 16, 0, span=32)) for n in (8, 16, 32, 64)]
  assert np.diff(counts).tolist() == [3 * 8, 3 * 16, 3 * 32]  # 3 tiles a query tile, linear
  assert len(visible_tiles(64, 64, 16, 16, 0)) == 64 * 65 // 2  # full causal: quadratic


def test_a_cache_call_sees_the_window_by_position():
  """Queries aligned to the end of a longer key buffer (decoding): the window counts positions."""
  q, k, v, pos, _ = _inputs(L=64)
  kw = dict(k_positions_BK=pos, window=10)
  for fn in (dense_attention, *(lambda *a, f=f, **kw: f(*a, block_q=8, block_k=8, **kw)
                                for f in TILED.values())):
    last = fn(q[:, -4:], k, v, q_positions_BQ=pos[:, -4:], **kw)
    whole = fn(q, k, v, q_positions_BQ=pos, **kw)
    np.testing.assert_allclose(last, whole[:, -4:], rtol=1e-5, atol=1e-5)


from flax import nnx  # noqa: E402

from configs import pretrain  # noqa: E402
from lcx import positions  # noqa: E402
from lcx.config import ConfigError, resolve  # noqa: E402
from lcx.model import ModelConfig, Transformer, token_losses  # noqa: E402

TOKENS = jax.random.randint(jax.random.key(1), (2, 48), 0, 64)
POS = jnp.broadcast_to(jnp.arange(48), (2, 48))
RNOPE_SWA = dict(  # Cohere's recipe: 3 local RoPE layers to 1 global NoPE layer
    position_pattern=(("rope", positions.RopeOptions(original_length=64)), ("rope", None),
                      ("rope", None), ("none", None)),
    window=8, attention_layers=("local", "local", "local", "global"))


def _model(**fields):
  cfg = dict(vocab_size=64, d_model=32, n_layers=4, n_heads=4, head_dim=8, mlp_dim=64,
             max_len=64, position_options=positions.RopeOptions(original_length=64),
             attention="dense", attention_block=16)
  cfg.update(fields)
  if cfg.get("position_pattern"):
    cfg["position_pattern"] = tuple((n, o or cfg["position_options"])
                                    for n, o in cfg["position_pattern"])
  return Transformer(ModelConfig(**cfg), rngs=nnx.Rngs(0))


def _loss_and_grads(model):
  graphdef, params = nnx.split(model)
  loss = lambda p: token_losses(nnx.merge(graphdef, p)(TOKENS[:, :-1], POS[:, :-1]),
                                TOKENS[:, 1:]).mean()
  return jax.value_and_grad(loss)(params)


def test_local_layers_run_the_same_through_every_path():
  """RNoPE-SWA through dense and blockwise, looped and scanned: values and gradients."""
  reference = _loss_and_grads(_model(**RNOPE_SWA))
  for fields in (dict(attention="blockwise"), dict(scan_layers=True),
                 dict(attention="blockwise", scan_layers=True)):
    loss, grads = _loss_and_grads(_model(**RNOPE_SWA, **fields))
    np.testing.assert_allclose(loss, reference[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads,
                 reference[1])


def test_a_window_past_the_sequence_is_full_attention_and_a_short_one_is_not():
  full = _model()(TOKENS, POS)
  np.testing.assert_allclose(_model(window=48)(TOKENS, POS), full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_model(chunk=64)(TOKENS, POS), full, rtol=1e-5, atol=1e-5)
  assert not np.allclose(_model(window=8)(TOKENS, POS), full, atol=1e-3)
  # only the layers the pattern names are local
  assert [bool(b.attn.local) for b in _model(**RNOPE_SWA).blocks] == [True, True, True, False]


def _tiny(pose_target_len=0, **model):
  c = pretrain.get_config("tiny")
  c.model.update(**model)
  c.data.pose_target_len = pose_target_len
  return c


def test_the_config_refuses_local_layers_it_cannot_run():
  resolve(_tiny(window=32, attention_layers=("local", "global")), 1)
  for model, message in (
      (dict(window=-1), "config.model.window=-1 must be an integer >= 0"),
      (dict(chunk=5000), "config.model.chunk=5000 is longer than the 128 positions a training row "
                         "spans"),
      (dict(window=8, chunk=8), "a local layer has one or the other"),
      (dict(window=8, attention_layers=("local", "wide")), "'wide' is not a kind of layer; "
                                                           "allowed: local, global"),
      (dict(attention_layers=("local",)), "config.model.window and config.model.chunk are 0"),
      (dict(window=8, attention="cudnn", pose_target_len=512),
       "'cudnn' masks local layers by token index, and config.data.pose_target_len skips"),
      (dict(window=8, memory="xl", segment_len=16), "a memory mechanism with local attention"),
      (dict(window=8, attention_layers=("local", "local", "global"), scan_layers=True),
       "repeat every 3 layers, which must divide n_layers")):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
      resolve(_tiny(**model), 1)


def test_auto_runs_local_layers_through_a_kernel_that_masks_by_position():
  from lcx import attention
  for scheme in ("rope", "alibi"):
    for local in ("window", "chunk"):
      choice = attention.choose("auto", scheme=scheme, local=local)
      for length in (128, 4096, 65536):
        assert choice.kernel(length) in ("dense", "blockwise", "native")
        assert choice.kernel(length, packed=True) in ("dense", "blockwise", "native")
  # on accelerators auto passes over cuDNN and splash (by token index) for local layers
  for backend, fused in (("gpu", "cudnn"), ("tpu", "splash")):
    auto = attention.Choice("auto", "none", None, backend, block=128, local="window")
    assert auto.kernel(4096) == "blockwise"
    assert attention.select("auto", bias=None, backend=backend, local="window") == "blockwise"
    assert attention.Choice("auto", "none", None, backend, block=128).kernel(4096) == fused
  # named, they take a window and refuse a chunk
  attention.check("cudnn", bias=None, backend="gpu", local="window")
  with pytest.raises(ValueError, match="'splash' cannot run this model's local layers: it takes "
                                       "no local chunk"):
    attention.check("splash", bias=None, backend="tpu", local="chunk")


@pytest.mark.parametrize("packed", [False, True])
def test_splash_and_cudnn_local_windows_equal_dense(packed):
  """splash in the Pallas interpreter and cuDNN's call through XLA's implementation of the same
  jax.nn.dot_product_attention call (cuDNN itself needs a GPU): a window by index equals the
  window by position where positions count tokens in each document."""
  q, k, v, pos, seg = _inputs(L=256, H=2, G=2, K=16, packed=packed)
  kw = dict(q_positions_BQ=pos, k_positions_BK=pos, q_segment_ids_BQ=seg, k_segment_ids_BK=seg,
            window=100)
  loss = lambda fn: lambda q, k, v: (fn(q, k, v, **kw) * jnp.sin(q)).sum()
  want = jax.value_and_grad(loss(dense_attention), argnums=(0, 1, 2))(q, k, v)
  kernels = [lambda *a, **kw: library.splash_attention(*a, block=128, interpret=True, **kw)]
  if not packed:  # cuDNN takes packed documents only as a full mask: refused at the call
    kernels.append(lambda *a, **kw: library.cudnn_attention(*a, implementation="xla", **kw))
  for fn in kernels:
    got = jax.value_and_grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4)
    for a, b in zip(got[1], want[1]):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match="splash attention takes no local chunk"):
    library.splash_attention(q, k, v, **{**kw, "window": 0, "chunk": 64}, block=128,
                             interpret=True)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("local", [dict(window=96), dict(chunk=128)])
def test_the_pallas_kernel_lowers_local_layers_for_tpu_and_gpu(platform, local):
  """As tests/test_attention_kernels.py lowers the full kernel: jax.export for the platform,
  forward and gradients, packed documents, queries at the end of longer keys, bfloat16."""
  from lcx.attention.pallas import pallas_attention
  H, K, Q, S = 4, 64, 200, 300
  q, k, v = (jnp.zeros((2, n, H, K), jnp.bfloat16) for n in (Q, S, S))
  k_pos = jnp.broadcast_to(jnp.arange(S), (2, S))
  seg = (k_pos >= 120).astype(jnp.int32)

  def loss(q, k, v):
    out = pallas_attention(q, k, v, q_positions_BQ=k_pos[:, S - Q:], k_positions_BK=k_pos,
                           q_segment_ids_BQ=seg[:, S - Q:], k_segment_ids_BK=seg,
                           interpret=False, platform="gpu" if platform == "cuda" else platform,
                           **local)
    return out.astype(jnp.float32).sum()

  calls = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
  exported = jax.export.export(
      jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=(platform,),
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(calls["cuda"])])(q, k, v)
  assert exported.mlir_module().count(calls[platform]) == 3  # forward, dK/dV, dQ


@pytest.mark.parametrize("local", [dict(window=24), dict(chunk=32), dict(window=500)])
def test_flops_count_the_keys_local_layers_see(local):
  """The FLOP count's span against the keys each query of a local layer really sees (counted
  from the mask): the full count's span is the window (at most L); the causal one's is twice
  the mean keys a causal query sees, as a global layer's L is twice its L / 2."""
  L = 128
  pos = jnp.arange(L)[None]
  seen = np.asarray(local_mask(pos, pos, **local))[0] & np.tril(np.ones((L, L), bool))
  cfg = ModelConfig(vocab_size=8, n_layers=2, **local)
  full, _ = cfg.attention_context(L)
  causal, _ = cfg.attention_context(L, causal=True)
  assert full == min(local.get("window") or local.get("chunk"), L)
  assert causal == pytest.approx(2 * seen.sum(axis=1).mean(), rel=1e-9)
  half = ModelConfig(vocab_size=8, n_layers=2, attention_layers=("local", "global"), **local)
  assert half.attention_context(L)[0] == (full + L) / 2  # one local layer, one global
