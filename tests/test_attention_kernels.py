"""Blockwise, native and Pallas (interpreted) attention against the dense reference: values and
gradients, every scheme, uneven lengths, packed documents, learned biases, a sharded mesh; the
implementation switch and its refusals."""
import contextlib
import inspect
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.pallas import tpu as pltpu

from lcx import attention, positions, sharding
from lcx import memory as memory_lib
from lcx.attention import blockwise, library, native, tiles
from lcx.attention import pallas as pallas_attention_lib
from lcx.attention.blockwise import blockwise_attention
from lcx.attention.library import dense_attention
from lcx.attention.pallas import pallas_attention
from lcx.model import ModelConfig, Transformer, token_losses
from tests.conftest import ROOT

SCHEMES = positions.available()  # every registered scheme


def _inputs(B=2, Q=37, S=37, H=4, K=8, seed=0, packed=True):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(keys[0], (B, Q, H, K))
  k, v = (jax.random.normal(kk, (B, S, H, K)) for kk in keys[1:])
  k_pos = jnp.broadcast_to(jnp.arange(S), (B, S))
  q_pos = k_pos[:, S - Q:]
  seg = None
  if packed:  # two documents per row, split at different places
    seg = jnp.asarray(np.stack([np.arange(S) >= 20, np.arange(S) >= 9]).astype(np.int32))
  return q, k, v, q_pos, k_pos, seg


def _loss(fn, q, k, v, q_pos, k_pos, seg, bias_fn, **kw):
  q_seg = None if seg is None else seg[:, k.shape[1] - q.shape[1]:]
  out = fn(q, k, v, q_positions_BQ=q_pos, k_positions_BK=k_pos, q_segment_ids_BQ=q_seg,
           k_segment_ids_BK=seg, bias_fn=bias_fn, **kw)
  weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
  return (out * weights).sum()


def _alibi(H):
  slopes = positions.alibi_slopes(H)
  return lambda qp, kp: positions.alibi_bias(qp, kp, slopes)


@pytest.mark.parametrize("block", [2, 8, 16, 64])  # 2: 190 tiles, while-loops; others unrolled
@pytest.mark.parametrize("bias", ["none", "alibi"])
@pytest.mark.parametrize("packed", [False, True])
def test_blockwise_matches_dense_values_and_gradients(block, bias, packed):
  q, k, v, q_pos, k_pos, seg = _inputs(packed=packed)
  bias_fn = _alibi(4) if bias == "alibi" else None
  dense = jax.value_and_grad(lambda *a: _loss(dense_attention, *a, q_pos, k_pos, seg, bias_fn),
                             argnums=(0, 1, 2))
  tiled = jax.jit(jax.value_and_grad(
      lambda *a: _loss(blockwise_attention, *a, q_pos, k_pos, seg, bias_fn, block_q=block,
                       block_k=block), argnums=(0, 1, 2)))
  (value, grads), (value_b, grads_b) = dense(q, k, v), tiled(q, k, v)
  np.testing.assert_allclose(value_b, value, rtol=1e-5)
  for g, g_b in zip(grads, grads_b):
    np.testing.assert_allclose(g_b, g, atol=2e-5)


@pytest.mark.parametrize("block", [8, 16, 64])
@pytest.mark.parametrize("bias", ["none", "alibi"])
@pytest.mark.parametrize("packed", [False, True])
def test_native_matches_dense_values_and_gradients(block, bias, packed):
  q, k, v, q_pos, k_pos, seg = _inputs(packed=packed)
  bias_fn = positions.LinearBias(positions.alibi_slopes(4)) if bias == "alibi" else None
  _assert_native_matches_dense(q, k, v, q_pos, k_pos, seg, bias_fn, block)


def _assert_native_matches_dense(q, k, v, q_pos, k_pos, seg, bias_fn, block):
  grads = [jax.value_and_grad(lambda *a: _loss(fn, *a, q_pos, k_pos, seg, bias_fn, **kw),
                              argnums=(0, 1, 2))(q, k, v)
           for fn, kw in [(dense_attention, {}),
                          (native.native_attention, dict(block_q=block, block_k=block))]]
  (value, grads), (value_n, grads_n) = grads
  np.testing.assert_allclose(value_n, value, rtol=1e-5)
  for g, g_n in zip(grads, grads_n):
    np.testing.assert_allclose(g_n, g, atol=2e-5)


def test_native_alibi_holds_for_far_and_restarting_positions():
  """Row 0 sits 30,000 tokens in (as in a long evaluation): the bias must come from position
  differences, not from products of large positions with slopes, which round (12 heads: slopes
  that are not powers of two). Row 1 restarts its positions at its second document, so some
  queries sit before the keys of their tile."""
  q, k, v, _, _, seg = _inputs(H=12, packed=True)
  S = k.shape[1]
  idx = np.arange(S)
  pos = jnp.asarray(np.stack([30_000 + idx, np.where(idx >= 9, idx - 9, idx)]).astype(np.int32))
  bias_fn = positions.LinearBias(positions.alibi_slopes(12))
  for block in (8, 16):
    _assert_native_matches_dense(q, k, v, pos, pos, seg, bias_fn, block)


@pytest.mark.parametrize("causal", [True, False])
def test_native_handles_queries_at_the_end_of_longer_keys_and_uneven_tiles(causal):
  """A cache-like block of queries, tiles of different and uneven sizes, a head dim (20) that is
  not a whole number of vectors, a bias in bfloat16 inputs' place: float32 inside, cast back."""
  q, k, v, q_pos, k_pos, seg = _inputs(Q=13, S=41, K=20)
  bias_fn = positions.LinearBias(positions.alibi_slopes(4))
  for block_q, block_k in [(4, 16), (16, 4), (5, 7)]:
    grads = [jax.grad(lambda *a: _loss(fn, *a, q_pos, k_pos, seg, bias_fn, causal=causal, **kw),
                      argnums=(0, 1, 2))(q, k, v)
             for fn, kw in [(dense_attention, {}),
                            (native.native_attention, dict(block_q=block_q, block_k=block_k))]]
    for g, g_n in zip(*grads):
      np.testing.assert_allclose(g_n, g, atol=2e-5)
  out = native.native_attention(q.astype(jnp.bfloat16), k, v, q_positions_BQ=q_pos,
                                k_positions_BK=k_pos)
  assert out.dtype == jnp.bfloat16


def test_native_runs_one_kernel_per_shard_on_a_mesh():
  """Under the model's activation sharding (rows over data x fsdp, heads over tensor) each shard
  runs its own kernel call: same result and gradients, and no shard gathers another's rows."""
  q, k, v, q_pos, k_pos, seg = _inputs(B=4, Q=24, S=24, H=4, K=8, packed=False)
  bias_fn = positions.LinearBias(positions.alibi_slopes(4))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = (("batch", ("data", "fsdp")), ("heads", "tensor"))
  grad = jax.value_and_grad(lambda *a: _loss(native.native_attention, *a, q_pos, k_pos, None,
                                             bias_fn), argnums=(0, 1, 2))
  spec = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", None, "heads"),
                                                                     rules))
  with sharding.activation_sharding(mesh, rules):
    sharded = jax.jit(grad).lower(*(jax.device_put(x, spec) for x in (q, k, v))).compile()
    value_s, grads_s = sharded(*(jax.device_put(x, spec) for x in (q, k, v)))
  value, grads = grad(q, k, v)
  assert "all-gather" not in sharded.as_text()
  np.testing.assert_allclose(value_s, value, rtol=1e-5)
  for g, g_s in zip(grads, grads_s):
    np.testing.assert_allclose(g_s, g, atol=2e-5)


def test_native_refuses_a_bias_it_cannot_compute():
  """A bias only as a function, or a linear one with learned slopes (the kernel returns no slope
  gradient, which would silently be zero), is refused at start; auto passes native over."""
  q, k, v, q_pos, k_pos, _ = _inputs(packed=False)
  learned_linear = positions.LinearBias(positions.alibi_slopes(4),
                                        kind=positions.BiasKind(learned=True, closed_form="linear"))
  for bias_fn in (_alibi(4), learned_linear):  # _alibi: the same numbers, only as a function
    with pytest.raises(ValueError, match="no position bias but a fixed linear one"):
      native.native_attention(q, k, v, q_positions_BQ=q_pos, k_positions_BK=k_pos,
                              bias_fn=bias_fn)
  for kind, reason in ((positions.BiasKind(learned=True), "computes no bias but the fixed linear"),
                       (learned_linear.kind, "returns no gradient")):
    with pytest.raises(ValueError, match=f"'native' cannot take this position scheme's bias: "
                                         f"it {reason}"):
      attention.select("native", bias=kind, backend="cpu")
    assert attention.select("auto", bias=kind, backend="cpu") == "blockwise"


def test_the_attention_face_loads_no_kernel_and_every_kernel_is_one_record():
  """Checking model.attention (what config resolution does) imports no kernel module, nor Pallas;
  each kernel's code is reached through its record, and the records agree with the kernels'
  signatures (tiled ones take block_q and block_k)."""
  script = ("import sys\nfrom lcx import attention, positions\n"
            "attention.check('pallas', bias=positions.bias_kind('fire'), backend='gpu')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lcx.attention.', "
            "'jax.experimental.pallas'))))\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "['lcx.attention.choice', 'lcx.attention.context', " \
      "'lcx.attention.kernels', 'lcx.attention.tiles']", result.stdout
  from lcx.attention import kernels
  for record in kernels.KERNELS.values():
    parameters = inspect.signature(kernels.function(record.name)).parameters
    assert {"q_positions_BQ", "bias_fn", "causal"} <= set(parameters), record.name
    assert record.tiled == ({"block_q", "block_k"} <= set(parameters)), record.name
    assert record.takes_offset == ("q_offset" in parameters), record.name


def test_without_a_compiler_auto_keeps_blockwise_and_native_says_why(tmp_path):
  """No C++ compiler (CXX=false) and nothing cached: auto logs why and runs blockwise; asking for
  native by name is refused at start with the compiler's failure."""
  script = (
      "import logging; logging.basicConfig()\n"
      "from lcx import attention, positions\n"
      "print('auto ->', attention.select('auto', bias=positions.bias_kind('alibi')))\n"
      "try:\n  attention.select('native', bias=None)\n"
      "except ValueError as e:\n  print('refused:', e)\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, CXX="false",
                                                LCX_NATIVE_CACHE=str(tmp_path)))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "auto -> blockwise" in result.stdout
  assert "refused: model.attention='native' cannot run here: building attention.cc failed" in (
      result.stdout)
  assert "native cannot run here" in result.stderr  # auto's logged warning
  assert list(tmp_path.iterdir()) == []  # the failed build left no partial library


def test_resolving_a_config_builds_no_kernel_and_the_model_chooses_once(tmp_path):
  """Config resolution only checks names, backends and bias forms; the native kernel is built (or
  found not to build) when the model is, once however many times it is built, and a named kernel
  that cannot run is refused there with the reason."""
  calls = tmp_path / "compiler-calls"
  fake = tmp_path / "fake-cxx"
  fake.write_text(f"#!/bin/sh\necho called >> {calls}\nexit 1\n")
  fake.chmod(0o755)
  script = (
      "import logging; logging.basicConfig()\n"
      "import pathlib\n"
      "from flax import nnx\n"
      "from configs import pretrain\n"
      "from lcx import config as config_lib\n"
      "from lcx.model import Transformer\n"
      f"calls = pathlib.Path({str(calls)!r})\n"
      "c = pretrain.get_config('tiny')\n"
      "resolved = {}\n"
      "for name in ('auto', 'native'):\n"
      "  c.model.attention = name\n"
      "  resolved[name] = config_lib.resolve(c, 1)\n"
      "print('compiler calls after resolving:', calls.exists())\n"
      "for _ in range(3):\n"
      "  model = Transformer(config_lib.model_config(resolved['auto']), rngs=nnx.Rngs(0))\n"
      "print('auto ->', model.attention_choice.kernel(128))\n"
      "try:\n"
      "  Transformer(config_lib.model_config(resolved['native']), rngs=nnx.Rngs(0))\n"
      "except ValueError as e:\n"
      "  print('refused:', e)\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=180, cwd=ROOT,
                          env=dict(os.environ, CXX=str(fake), LCX_NATIVE_CACHE=str(tmp_path / "c")))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "compiler calls after resolving: False" in result.stdout
  assert "auto -> blockwise" in result.stdout
  assert "refused: model.attention='native' cannot run here: building attention.cc failed" in (
      result.stdout)
  assert result.stderr.count("native cannot run here") == 1  # three models, one choice logged
  assert calls.read_text().count("called") == 1


def _lowering(name: str | None):
  """How the Pallas kernel is interpreted on this CPU: Pallas' generic interpreter (what the GPU
  kernel is checked with), or the TPU one, which simulates Mosaic's memory spaces."""
  return pltpu.force_tpu_interpret_mode() if name == "tpu" else contextlib.nullcontext()


@pytest.mark.parametrize("lowering", ["generic", "tpu"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", ["none", "alibi"])
def test_pallas_kernel_matches_dense_in_interpret_mode(bias, packed, lowering):
  """lcx's Pallas kernel (forward, dK/dV and dQ kernels), interpreted on the CPU."""
  q, k, v, q_pos, k_pos, seg = _inputs(packed=packed)
  bias_fn = _alibi(4) if bias == "alibi" else None
  with _lowering(lowering):
    (value, grads), (value_p, grads_p) = (
        jax.jit(jax.value_and_grad(lambda *a: _loss(fn, *a, q_pos, k_pos, seg, bias_fn, **kw),
                                   argnums=(0, 1, 2)))(q, k, v)
        for fn, kw in [(dense_attention, {}), (pallas_attention, dict(block_q=8, block_k=16))])
  np.testing.assert_allclose(value_p, value, rtol=1e-5)
  for g, g_p in zip(grads, grads_p):
    np.testing.assert_allclose(g_p, g, atol=2e-5)


# What lowering for a device checks on this CPU: Pallas' own rules for the target (Mosaic's block
# shapes, the primitives Triton and Mosaic lower), not what the device compiler does after.
_DEVICE_CALLS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("position", [p for p in SCHEMES if positions.bias_kind(p) is not None
                                      and not positions.bias_kind(p).rows])  # test_row_bias's
def test_the_pallas_kernel_lowers_for_tpu_and_gpu(position, platform):
  """The kernel compiled for a TPU (Mosaic) and a GPU (Triton), lowered here by jax.export for
  that platform: forward and every gradient (a learned bias's parameters included), bfloat16 at
  the model's head size, packed documents, queries at the end of longer keys, lengths that are
  not whole tiles. The interpreters above check the values; this checks that the device
  compilers are handed kernels Pallas can lower for them."""
  H, K, Q, S = 4, 64, 200, 300
  config = ModelConfig(vocab_size=64, d_model=H * K, n_heads=H, head_dim=K, max_len=S,
                       position=position)
  scheme = positions.make(position, config.position_config(), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(scheme, nnx.Param)
  # Each program evaluates its own head's bias (not every head's, H times the work).
  tile = jnp.broadcast_to(jnp.arange(128), (1, 128))
  bias, (consts, values) = tiles.hoisted_bias(scheme.bias_fn(0).per_tile(), tile,
                                                             tile)
  assert any(pallas_attention_lib._head_columns(bias, consts, values, H, 128, 128))
  q, k, v = (jnp.zeros((2, n, H, K), jnp.bfloat16) for n in (Q, S, S))
  k_pos = jnp.broadcast_to(jnp.arange(S), (2, S))
  seg = (k_pos >= 120).astype(jnp.int32)

  def loss(params, q, k, v):
    out = pallas_attention(q, k, v, q_positions_BQ=k_pos[:, S - Q:], k_positions_BK=k_pos,
                           q_segment_ids_BQ=seg[:, S - Q:], k_segment_ids_BK=seg,
                           bias_fn=nnx.merge(graphdef, params).bias_fn(0), interpret=False,
                           platform="gpu" if platform == "cuda" else platform)
    return out.astype(jnp.float32).sum()

  exported = jax.export.export(
      jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))), platforms=(platform,),
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(_DEVICE_CALLS["cuda"])])(
          params, q, k, v)
  text = exported.mlir_module()
  assert text.count(_DEVICE_CALLS[platform]) == 3  # forward, dK/dV, dQ


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel,lowering", [(blockwise_attention, None),
                                             (pallas_attention, "generic"),
                                             (pallas_attention, "tpu")])
def test_tiled_kernels_handle_queries_at_the_end_of_longer_keys_and_uneven_tiles(kernel, lowering,
                                                                                 causal):
  """A block of queries aligned with the end of the keys (a cache), tiles of different sizes
  that divide neither length."""
  q, k, v, q_pos, k_pos, seg = _inputs(Q=13, S=41)
  bias_fn = _alibi(4)
  for block_q, block_k in [(5, 7)] if lowering == "tpu" else [(4, 16), (16, 4), (5, 7)]:
    with _lowering(lowering):
      grads = [jax.grad(lambda *a: _loss(fn, *a, q_pos, k_pos, seg, bias_fn, causal=causal, **kw),
                        argnums=(0, 1, 2))(q, k, v)
               for fn, kw in [(dense_attention, {}),
                              (kernel, dict(block_q=block_q, block_k=block_k))]]
    for g, g_b in zip(*grads):
      np.testing.assert_allclose(g_b, g, atol=2e-5)


def test_tiles_above_the_diagonal_are_skipped():
  assert tiles.visible_tiles(4, 4, 8, 8, offset=0) == tuple(
      (i, j) for i in range(4) for j in range(i + 1))
  assert len(tiles.visible_tiles(4, 4, 8, 8, offset=None)) == 16  # not causal: all
  # A query tile ending at a key tile's first key still visits that tile.
  assert (0, 1) in tiles.visible_tiles(2, 4, 8, 4, offset=0)


@pytest.mark.parametrize("kernel,unroll_max_tiles,lowering,per_head", [  # blockwise: while-loops,
    (blockwise_attention, 0, None, True), (blockwise_attention, 64, None, True),  # unrolled
    (pallas_attention, None, "generic", True), (pallas_attention, None, "tpu", True),
    (pallas_attention, None, "generic", False)])  # the Pallas kernel's every-head path
def test_a_bias_with_parameters_gets_its_gradient_through_the_tiles(kernel, unroll_max_tiles,
                                                                    lowering, per_head,
                                                                    monkeypatch):
  monkeypatch.setattr(blockwise, "UNROLL_MAX_TILES", unroll_max_tiles)
  q, k, v, q_pos, k_pos, seg = _inputs()
  weights = jnp.linspace(0.1, 0.5, 4)

  def learned_bias(w):  # a KERPLE-like log bias with a learned weight per head
    log_distance = lambda qp, kp: jnp.log1p(
        jnp.abs(qp[:, :, None] - kp[:, None, :]).astype(jnp.float32))
    if per_head:  # the weights reach the tile as a (1, H, 1, 1) column: one head per program
      return lambda qp, kp: -w[None, :, None, None] * log_distance(qp, kp)[:, None]
    # as (H, 1, 1): not recognized as per head, so every program evaluates all heads
    return lambda qp, kp: (-w[:, None, None] * log_distance(qp, kp)[0][None])[None]

  tile = jnp.broadcast_to(jnp.arange(8), (1, 8))
  bias, (consts, params) = tiles.hoisted_bias(learned_bias(weights), tile, tile)
  assert any(pallas_attention_lib._head_columns(bias, consts, params, 4, 8, 8)) == per_head

  grad_dense = jax.grad(lambda w: _loss(dense_attention, q, k, v, q_pos, k_pos, seg,
                                        learned_bias(w)))(weights)
  with _lowering(lowering):
    grad_tiled = jax.jit(jax.grad(lambda w: _loss(kernel, q, k, v, q_pos, k_pos, seg,
                                                  learned_bias(w), block_q=8, block_k=8)))(weights)
  np.testing.assert_allclose(grad_tiled, grad_dense, rtol=1e-4)
  assert np.abs(grad_dense).min() > 0


@pytest.mark.parametrize("implementation", [*attention.TILED, "pallas-tpu"])
@pytest.mark.parametrize("position", SCHEMES)
def test_every_scheme_trains_the_same_through_the_tiled_kernels(position, implementation):
  """A whole model (two layers, packed documents): loss and every parameter gradient, a learned
  bias's included (it must not be silently zero); a kernel that cannot take the scheme's bias
  refuses it when the model is built. (The Pallas kernel, interpreted here, in the generic and
  the TPU interpreter, is run for the schemes with a bias: without one it is the kernel the
  tests above check.)"""
  implementation, _, lowering = implementation.partition("-")
  if implementation == "pallas" and positions.bias_kind(position) is None:
    pytest.skip("no bias: the Pallas kernel alone is checked above")
  if attention.accepts(implementation, positions.bias_kind(position)):
    with pytest.raises(ValueError, match=f"'{implementation}' cannot take this position scheme"):
      Transformer(ModelConfig(vocab_size=64, position=position, attention=implementation),
                  rngs=nnx.Rngs(0))
    return

  # The TPU interpreter runs one layer (it is slow; the second layer's parameters are the
  # generic interpreter's and the other kernels' to check).
  layers = 1 if lowering == "tpu" else 2

  def loss_and_grads(implementation):
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=layers, n_heads=4,
                                    head_dim=8, mlp_dim=64, max_len=48, position=position,
                                    attention=implementation, attention_block=16),
                        rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 45), 0, 64)
    segments = jnp.asarray(np.stack([np.arange(45) >= 30, np.arange(45) >= 7]).astype(np.int32))
    starts = jnp.asarray([[0] * 30 + [30] * 15, [0] * 7 + [7] * 38])
    pos = jnp.broadcast_to(jnp.arange(45), (2, 45)) - starts

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1], pos[:, :-1], segments[:, :-1])
      return token_losses(logits, tokens[:, 1:]).mean()

    graphdef, params = nnx.split(model, nnx.Param)
    return jax.jit(jax.value_and_grad(loss))(params)

  with _lowering(lowering):
    (loss, grads), (loss_b, grads_b) = loss_and_grads("dense"), loss_and_grads(implementation)
  np.testing.assert_allclose(loss_b, loss, rtol=1e-5)
  for g, g_b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(g_b, g, atol=3e-6, rtol=1e-4)
  for path, g_b in jax.tree_util.tree_leaves_with_path(grads_b):
    if "bias_table" in jax.tree_util.keystr(path):  # a learned bias: its gradient arrives
      assert np.abs(np.asarray(g_b)).max() > 1e-4


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_rematerialization_leaves_the_gradients_unchanged(remat):
  def grads(policy):
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8,
                                    mlp_dim=64, max_len=16, position="alibi", remat=policy),
                        rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 64)
    pos = jnp.broadcast_to(jnp.arange(15), (2, 15))
    loss = lambda p: token_losses(nnx.merge(graphdef, p)(tokens[:, :-1], pos), tokens[:, 1:]).mean()
    return jax.jit(jax.grad(loss))(params)

  for g, g_r in zip(jax.tree.leaves(grads("none")), jax.tree.leaves(grads(remat))):
    np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-7)


def test_the_switch_refuses_what_cannot_work_and_auto_falls_back():
  assert attention.select("auto", bias=None, backend="cpu") == "native"
  assert attention.select("auto", bias=positions.bias_kind("alibi"), backend="cpu") == "native"
  assert attention.select("auto", bias=None, backend="gpu") == "cudnn"
  assert attention.select("auto", bias=positions.bias_kind("alibi"), backend="gpu") == "blockwise"
  assert attention.select("auto", bias=None, backend="tpu") == "splash"
  assert attention.select("auto", bias=positions.BiasKind(learned=True), backend="tpu") == "blockwise"
  with pytest.raises(ValueError, match="cannot take this position scheme's bias"):
    attention.select("cudnn", bias=positions.bias_kind("alibi"), backend="gpu")
  with pytest.raises(ValueError, match="'splash' cannot take this position scheme's bias"):
    attention.select("splash", bias=positions.bias_kind("alibi"), backend="tpu")
  with pytest.raises(ValueError, match="runs on gpu, not on cpu"):
    attention.select("cudnn", bias=None, backend="cpu")
  with pytest.raises(ValueError, match="runs on cpu, not on gpu"):
    attention.select("native", bias=None, backend="gpu")
  with pytest.raises(ValueError, match="runs on cpu/gpu/tpu, not on metal"):
    attention.check("pallas", bias=None, backend="metal")
  for backend in ("gpu", "tpu"):
    assert attention.select("pallas", bias=positions.bias_kind("t5"), backend=backend) == "pallas"
  with pytest.raises(ValueError,
                     match="allowed: dense, blockwise, native, cudnn, splash, pallas, auto"):
    attention.select("flash3", bias=None)


@pytest.mark.parametrize("packed", [False, True])
def test_splash_kernel_matches_dense_in_interpret_mode(packed):
  """The TPU splash kernel run by Pallas' interpreter on CPU: the adapter's layout, scaling,
  causal offset and packed documents, values and gradients."""
  q, k, v, q_pos, k_pos, seg = _inputs(B=2, Q=256, S=256, H=2, K=16, packed=packed)
  dense = jax.value_and_grad(lambda *a: _loss(dense_attention, *a, q_pos, k_pos, seg, None),
                             argnums=(0, 1, 2))(q, k, v)
  splash = jax.value_and_grad(
      lambda *a: _loss(library.splash_attention, *a, q_pos, k_pos, seg, None, block=128,
                       interpret=True), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(splash[0], dense[0], rtol=1e-4)
  for got, want in zip(splash[1], dense[1]):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match="multiples of the tile length"):
    library.splash_attention(q[:, :100], k[:, :100], v[:, :100], q_positions_BQ=q_pos[:, :100],
                               k_positions_BK=k_pos[:, :100], block=128, interpret=True)
  # auto on TPU takes splash where the lengths fit its tiles and blockwise where they do not.
  auto = attention.Choice("auto", "none", None, "tpu", block=128)
  assert [auto.kernel(n) for n in (256, 100)] == ["splash", "blockwise"]


@pytest.mark.parametrize("position", ["learned", "alibi", "kerple"])  # kerple: one bias per layer
def test_scan_over_layers_gives_the_same_loss_gradients_and_parameter_tree(position):
  def run(scan, remat="none"):
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, head_dim=8,
                                    mlp_dim=64, max_len=16, position=position, scan_layers=scan,
                                    remat=remat), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 64)
    pos = jnp.broadcast_to(jnp.arange(15), (2, 15))
    loss = lambda p: token_losses(nnx.merge(graphdef, p)(tokens[:, :-1], pos), tokens[:, 1:]).mean()
    return jax.jit(jax.value_and_grad(loss))(params)

  (loss, grads), (loss_s, grads_s) = run(False), run(True)
  assert jax.tree.structure(grads) == jax.tree.structure(grads_s)  # checkpoints interchange
  np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
  for g, g_s in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_s)):
    np.testing.assert_allclose(g_s, g, rtol=1e-5, atol=1e-7)
  _, grads_r = run(True, remat="full")
  for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_with_float32_weights_through_blockwise():
  losses = {}
  for implementation in ("dense", "blockwise"):
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8,
                                    mlp_dim=64, max_len=40, position="alibi",
                                    attention=implementation, attention_block=16,
                                    compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 40), 0, 64)
    pos = jnp.broadcast_to(jnp.arange(39), (2, 39))
    loss = lambda p: token_losses(nnx.merge(graphdef, p)(tokens[:, :-1], pos), tokens[:, 1:]).mean()
    losses[implementation], grads = jax.jit(jax.value_and_grad(loss))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # master weights
  np.testing.assert_allclose(losses["blockwise"], losses["dense"], rtol=1e-2)


# --- grouped-query attention ------------------------------------------------------------------

def _repeat_heads(x, heads):
  """(B, L, G, K) -> (B, L, heads, K): each key/value head repeated for its group of query heads,
  what grouped-query attention must equal (and what no kernel should need to build)."""
  return jnp.repeat(x, heads // x.shape[2], axis=2)


_GQA_KERNELS = {  # each kernel that runs here, with its own arguments and a bias it takes
    "blockwise": (blockwise_attention, dict(block_q=8, block_k=8), "t5"),
    "blockwise-loop": (blockwise_attention, dict(block_q=2, block_k=2), "t5"),  # while-loops
    "native": (native.native_attention, dict(block_q=8, block_k=8), "alibi"),
    "pallas": (pallas_attention, dict(block_q=8, block_k=8), "t5"),
    "pallas-tpu": (pallas_attention, dict(block_q=8, block_k=8), "t5"),
    "splash": (library.splash_attention, dict(block=128, interpret=True), None),
    "dense": (dense_attention, {}, "t5"),
}


@pytest.mark.parametrize("kernel", _GQA_KERNELS)
def test_every_kernel_takes_fewer_key_value_heads_than_query_heads(kernel):
  """Grouped-query attention (4 query heads, 2 key/value heads) equals multi-head attention over
  the key/value heads repeated for their groups: values, dQ, and dK / dV summed over each group,
  with packed documents, queries at the end of longer keys (a cache) and a position bias (a
  learned one where the kernel takes it, whose gradient must agree too)."""
  fn, kw, scheme = _GQA_KERNELS[kernel]
  if kernel == "native" and native.unavailable_reason():
    pytest.skip(native.unavailable_reason())
  Q, S = (256, 256) if kernel == "splash" else (29, 37)  # splash: lengths that fill its tiles
  q, k, v, q_pos, k_pos, seg = _inputs(Q=Q, S=S, H=4, K=8, packed=True)
  k, v = k[:, :, :2], v[:, :, :2]
  seg = None if kernel == "splash" else seg  # (splash's packing is checked above)
  made = scheme and positions.make(scheme, positions.PositionConfig(
      d_model=32, n_heads=4, head_dim=8, max_len=64), rngs=nnx.Rngs(0))
  bias_fn = made and (made.bias_fn(0) if kernel != "native" else
                      positions.LinearBias(positions.alibi_slopes(4)))
  with _lowering("tpu" if kernel == "pallas-tpu" else None):
    if kernel == "blockwise-loop":
      with _unroll_max_tiles(0):
        got = jax.value_and_grad(lambda *a: _loss(fn, *a, q_pos, k_pos, seg, bias_fn, **kw),
                                 argnums=(0, 1, 2))(q, k, v)
    else:
      got = jax.value_and_grad(lambda *a: _loss(fn, *a, q_pos, k_pos, seg, bias_fn, **kw),
                               argnums=(0, 1, 2))(q, k, v)
  want = jax.value_and_grad(
      lambda q, k, v: _loss(dense_attention, q, _repeat_heads(k, 4), _repeat_heads(v, 4), q_pos,
                            k_pos, seg, bias_fn), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  assert [g.shape for g in got[1]] == [q.shape, k.shape, v.shape]
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, atol=3e-5, rtol=1e-4)


@contextlib.contextmanager
def _unroll_max_tiles(n):
  before, blockwise.UNROLL_MAX_TILES = blockwise.UNROLL_MAX_TILES, n
  try:
    yield
  finally:
    blockwise.UNROLL_MAX_TILES = before


def _as_multi_head(params, heads):
  """A grouped-query model's parameters as the multi-head model that equals it: wk and wv with
  each key/value head repeated for its group."""
  def repeat(path, x):
    name = jax.tree_util.keystr(path)
    if "'wk'" in name or "'wv'" in name:
      return jnp.repeat(x, heads // x.shape[-2], axis=-2)
    return x
  return jax.tree_util.tree_map_with_path(repeat, params)


@pytest.mark.parametrize("variant", [*SCHEMES, "rope+xl", "rope+compressive", "rope+knn",
                                     "alibi+xl"])
def test_every_scheme_and_memory_with_grouped_query_attention(variant):
  """The per-scheme GQA column: a model with 2 key/value heads for 4 query heads (through the
  kernel auto picks here, packed documents) equals the multi-head model whose wk and wv repeat
  each key/value head for its group: loss, and every gradient (wk's and wv's summed over the
  group). The memory arms hold only the key/value heads."""
  position, _, mechanism = variant.partition("+")
  memory_fields = dict(memory=mechanism, segment_len=16) if mechanism else {}
  if mechanism == "knn":
    memory_fields["memory_options"] = memory_lib.option_types()["knn"](size=32, k=4)

  def model(kv_heads):
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                   n_kv_heads=kv_heads, head_dim=8, mlp_dim=64, max_len=48,
                                   position=position, attention_block=16, **memory_fields),
                       rngs=nnx.Rngs(0))

  grouped, multi = model(2), model(4)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 48), 0, 64)
  segments = jnp.asarray(np.stack([np.arange(48) >= 30, np.arange(48) >= 7]).astype(np.int32))
  pos = jnp.broadcast_to(jnp.arange(48), (2, 48)) - jnp.asarray([[0] * 30 + [30] * 18,
                                                                 [0] * 7 + [7] * 41])

  def loss_and_grads(model, params):
    graphdef, _ = nnx.split(model, nnx.Param)
    loss = lambda p: token_losses(nnx.merge(graphdef, p)(tokens[:, :-1], pos[:, :-1],
                                                         segments[:, :-1]), tokens[:, 1:]).mean()
    return jax.jit(jax.value_and_grad(loss))(params)

  params = nnx.state(grouped, nnx.Param)
  assert params["blocks"][0]["attn"]["wk"][...].shape == (32, 2, 8)
  loss_g, grads_g = loss_and_grads(grouped, params)
  loss_m, grads_m = loss_and_grads(multi, _as_multi_head(params, 4))
  np.testing.assert_allclose(loss_g, loss_m, rtol=1e-5)
  summed = jax.tree_util.tree_map_with_path(  # a group's repeated heads' gradients, added up
      lambda path, g: (g.reshape(*g.shape[:-2], 2, 2, g.shape[-1]).sum(-2)
                       if "'wk'" in jax.tree_util.keystr(path) or "'wv'" in
                       jax.tree_util.keystr(path) else g), grads_m)
  for g, m in zip(jax.tree.leaves(grads_g), jax.tree.leaves(summed)):
    np.testing.assert_allclose(g, m, atol=3e-6, rtol=1e-4)
