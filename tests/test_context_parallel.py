"""Context parallelism: a sequence sharded over the mesh's context axis gives one device's losses
and gradients, for every position scheme, packed documents straddling the shards' chunks, and
retrieval answers' token weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcx import config as config_lib
from lcx import positions, sharding
from lcx.attention.blockwise import blockwise_attention
from lcx.attention.library import dense_attention
from lcx.sharding import make_mesh
from lcx.train.step import TrainProgram

LAYER_SCHEMES = tuple(name for name in positions.available() if not positions.embeds(name))
EMBEDDING_SCHEMES = tuple(name for name in positions.available() if positions.embeds(name))


def test_context_order_puts_an_early_and_a_late_chunk_on_each_device():
  assert list(sharding.context_chunks(2)) == [0, 3, 1, 2]
  x = np.arange(2 * 16).reshape(2, 16)
  ordered = sharding.to_context_order(x, 4, axis=1)
  # device d holds places [4d, 4d + 4): chunks d and 7 - d, two tokens each
  np.testing.assert_array_equal(ordered[0, 4:8], [2, 3, 12, 13])
  np.testing.assert_array_equal(sharding.from_context_order(ordered, 4, axis=1), x)
  np.testing.assert_array_equal(sharding.to_context_order(x, 1), x)
  with pytest.raises(ValueError, match="cannot be split into 2 x 3 equal chunks"):
    sharding.to_context_order(x, 3)


@pytest.mark.parametrize("kernel", [dense_attention, blockwise_attention])
def test_a_traced_query_offset_equals_the_rows_of_the_full_sequence(kernel):
  """Chunks of queries at a traced offset into all the keys (packed documents, a window, a
  bias, grouped heads) give the full causal attention's rows, and its gradients summed."""
  B, L, H, G, K = 2, 96, 4, 2, 8
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(B, L, h, K)), jnp.float32) for h in (H, G, G))
  pos = jnp.tile(jnp.arange(L), (B, 1))
  seg = jnp.asarray(1 + (np.arange(L)[None] >= np.array([[30], [50]])), jnp.int32)
  slopes = jnp.asarray([0.5, 0.25, 0.125, 0.0625])
  bias_fn = lambda qp, kp: -slopes[None, :, None, None] * jnp.abs(
      qp[:, None, :, None] - kp[:, None, None, :]).astype(jnp.float32)
  extra = dict(block_q=8, block_k=16) if kernel is blockwise_attention else {}
  common = dict(k_positions_BK=pos, k_segment_ids_BK=seg, bias_fn=bias_fn, window=40)

  def by_chunks(q, k, v):
    step = 24
    return jnp.concatenate([
        kernel(q[:, s:s + step], k, v, q_positions_BQ=pos[:, s:s + step],
               q_segment_ids_BQ=seg[:, s:s + step], q_offset=jnp.int32(s), **common, **extra)
        for s in range(0, L, step)], axis=1)

  full = lambda q, k, v: dense_attention(q, k, v, q_positions_BQ=pos, q_segment_ids_BQ=seg,
                                         **common)
  np.testing.assert_allclose(jax.jit(by_chunks)(q, k, v), full(q, k, v), atol=2e-6)
  loss = lambda f: lambda *x: (f(*x) ** 2).sum()
  grads = jax.jit(jax.grad(loss(by_chunks), argnums=(0, 1, 2)))(q, k, v)
  for got, want in zip(grads, jax.grad(loss(full), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("window", [0, 40])
def test_the_ring_over_a_sharded_sequence_equals_the_full_sequences(window):
  """The ring over context=4 devices (chunks of 12 queries in tiles of 8: padded) against the
  full sequence's rows and gradients: packed documents, a learned bias's parameter, a row bias
  (FoX's form), grouped heads, with and without a window. (The gather's are the model tests'.)"""
  import functools
  from lcx.attention.context import attend_over_context
  C, B, L, H, G, K = 4, 2, 96, 4, 2, 8
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(B, L, h, K)), jnp.float32) for h in (H, G, G))
  a, b = (jnp.asarray(rng.normal(size=(B, H, L)), jnp.float32) for _ in range(2))
  pos = jnp.tile(jnp.arange(L), (B, 1))
  seg = jnp.asarray(1 + (np.arange(L)[None] >= np.array([[30], [50]])), jnp.int32)
  slopes = jnp.asarray([0.5, 0.25, 0.125, 0.0625])
  bias = lambda w: lambda qp, kp: -w * slopes[None, :, None, None] * jnp.abs(
      qp[:, None, :, None] - kp[:, None, None, :]).astype(jnp.float32)
  mesh = make_mesh(dict(data=1, fsdp=1, context=C, tensor=1), jax.devices()[:C])
  ordered = lambda x, axis=1: sharding.to_context_order(x, C, axis)

  def sharded(q, k, v, a, b, w):
    with sharding.activation_sharding(mesh, (("length", "context"),)):
      o = attend_over_context(
          functools.partial(blockwise_attention, block_q=8, block_k=8), *map(ordered, (q, k, v)),
          q_positions_BQ=ordered(pos), k_positions_BK=ordered(pos),
          q_segment_ids_BQ=ordered(seg), k_segment_ids_BK=ordered(seg), bias_fn=bias(w),
          row_bias=(ordered(a, 2), ordered(b, 2)), window=window, exchange="ring", block=8)
    return sharding.from_context_order(o, C, 1)

  full = lambda q, k, v, a, b, w: dense_attention(
      q, k, v, q_positions_BQ=pos, k_positions_BK=pos, q_segment_ids_BQ=seg,
      k_segment_ids_BK=seg, bias_fn=bias(w), row_bias=(a, b), window=window)
  args = (q, k, v, a, b, jnp.float32(0.3))
  np.testing.assert_allclose(jax.jit(sharded)(*args), full(*args), atol=2e-6)
  loss = lambda f: lambda *x: (f(*x) ** 2).sum()
  grads = jax.jit(jax.grad(loss(sharded), argnums=range(6)))(*args)
  for got, want in zip(grads, jax.grad(loss(full), argnums=range(6))(*args)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def _packed_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict:
  """Packed documents of random lengths (so they straddle every chunk boundary), positions
  restarting at each, and retrieval answers' weights (4 on a few tokens)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(rows, length + 1))
  segment_ids = np.zeros((rows, length), np.int32)
  positions_ = np.zeros((rows, length), np.int32)
  for r in range(rows):
    start, doc = 0, 1
    while start < length:
      end = min(length, start + int(rng.integers(length // 5, length // 2)))
      segment_ids[r, start:end], positions_[r, start:end] = doc, np.arange(end - start)
      start, doc = end, doc + 1
  weights = np.ones((rows, length), np.float32)
  weights[rng.random((rows, length)) < 0.1] = 4.0
  return dict(tokens=tokens[:, :-1].astype(np.int32), targets=tokens[:, 1:].astype(np.int32),
              positions=positions_, segment_ids=segment_ids, weights=weights)


def _loss_and_grads(c, mesh_sizes, batch, devices=None):
  c = config_lib.resolve(c, len(devices or jax.devices()))
  mesh = make_mesh(mesh_sizes, devices)
  program = TrainProgram(config_lib.model_config(c), config_lib.optimizer_config(c), mesh,
                         tuple(map(tuple, c.mesh.rules)))
  state = program.init()
  grads_fn = jax.jit(program._grads, in_shardings=(program.state_shardings["params"],
                                                   program.batch_sharding))
  with sharding.activation_sharding(mesh, program.rules):
    loss, grads = grads_fn(state["params"], program.global_batch(batch))
  return float(loss), jax.tree.map(np.asarray, jax.device_get(grads))


@pytest.mark.parametrize("setup", ["every-layer-scheme", *EMBEDDING_SCHEMES, "fox+gqa+window",
                                   "ring+gqa+window"])
def test_context_parallel_losses_and_gradients_equal_one_devices(tiny_config, setup):
  """Against one device, rtol 1e-5: every in-layer scheme on mesh.context=4, FoX (a learned bias
  made from the data) and the embedding schemes on data=2 x context=4; the ring variant with a
  learned bias (FIRE) and FoX on data=2 x context=4."""
  name, *variants = setup.split("+")
  m = tiny_config.model
  sizes = dict(data=2, fsdp=1, context=4, tensor=1)
  if name == "every-layer-scheme":  # a layer each, learned biases' gradients included
    m.update(position_layers=LAYER_SCHEMES, n_layers=len(LAYER_SCHEMES))
    sizes.update(data=1)
  elif name == "ring":
    m.update(position_layers=("fire", "fox"), n_layers=2)
    sizes.update(context_exchange="ring")
  else:
    m.position = name
  if name in EMBEDDING_SCHEMES:  # their attention is the plain one: one layer shows it
    m.n_layers = 1
  if "gqa" in variants:
    m.n_kv_heads = 2
  if "window" in variants:
    m.update(window=24, attention_layers=("local", "global"))
  m.attention_block = 16  # chunks of 8 or 16 tokens against keys of 4 to 8 tiles
  tiny_config.data.seq_len = 128
  batch = _packed_batch(tiny_config.data.batch_size, 128, 256)
  # the reference: one device, the full score matrix (quick to compile, and another kernel)
  m.attention = "dense"
  tiny_config.mesh.update(data=1, fsdp=1, context=1, tensor=1)
  loss, grads = _loss_and_grads(tiny_config, tiny_config.mesh.to_dict(), batch,
                                jax.devices()[:1])
  m.attention = "blockwise"
  tiny_config.mesh.update(**sizes)
  got_loss, got_grads = _loss_and_grads(tiny_config, tiny_config.mesh.to_dict(), batch,
                                        jax.devices()[:sizes["data"] * sizes["context"]])
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  # float32 noise is relative to the gradient's scale: a parameter whose true gradient is 0
  # (FIRE's per-head constant, which shifts a whole softmax row) has only noise to compare
  scale = max(np.abs(g).max() for g in jax.tree.leaves(grads))
  flat_got, flat_want = (jax.tree_util.tree_leaves_with_path(g) for g in (got_grads, grads))
  for (path, got), (_, want) in zip(flat_got, flat_want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_scorer_on_a_context_mesh_equals_one_device(tiny_config):
  """Evaluation's windows (of a length that needs padding to 2 x context) sharded over the
  context axis: the same losses and predictions as on one device."""
  from flax import nnx
  from lcx.evaluate.scoring import Scorer
  from lcx.model import Transformer
  tiny_config.model.position = "alibi"
  c = config_lib.resolve(tiny_config, 1)
  model = Transformer(config_lib.model_config(c), rngs=nnx.Rngs(0))
  rules = tuple(map(tuple, c.mesh.rules))
  windows = np.random.default_rng(1).integers(0, 256, size=(4, 38)).astype(np.int32)
  one = Scorer(model, make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]), rules)
  context = Scorer(model, make_mesh(dict(data=2, fsdp=1, context=4, tensor=1)), rules)
  (losses, argmax), (got_losses, got_argmax) = one.run(windows), context.run(windows)
  np.testing.assert_allclose(got_losses, losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got_argmax, argmax)


def test_a_run_resumed_with_another_mesh_context_continues_exactly(trained_run, tiny_config,
                                                                   tmp_path):
  """The shared run (6 steps on data=8) resumed from its step-3 checkpoint on data=2 x
  context=4: the same losses, and the training loop, data stream and checkpoints all work on a
  sharded sequence."""
  import shutil
  from lcx.metrics import read_jsonl
  from lcx.runs import layout
  from lcx.train import train_and_evaluate
  workdir = shutil.copytree(trained_run, tmp_path / "run")
  straight = [r["loss"] for r in read_jsonl(workdir / layout.METRICS)]
  shutil.rmtree(workdir / layout.CHECKPOINTS / "6")
  tiny_config.mesh.update(data=2, fsdp=1, context=4, tensor=1)
  train_and_evaluate(tiny_config, workdir)
  resumed = [r["loss"] for r in read_jsonl(workdir / layout.METRICS)]
  assert [r["step"] for r in read_jsonl(workdir / layout.METRICS)] == list(range(1, 7))
  np.testing.assert_allclose(resumed, straight, rtol=1e-5)
  from lcx.evaluate.loading import load_run  # evaluation loads it on a data-only mesh
  assert load_run(workdir).mesh.shape["context"] == 1
