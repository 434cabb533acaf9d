"""The attention kernels on the accelerator itself (GPU or TPU) against dense attention there:
values and gradients, packed documents, every scheme through `auto` (and lcx's Pallas kernel on a
GPU) in a whole model.
benchmarks/accelerator.sh runs these on the device; on a CPU they are skipped (the same kernels
are covered there by test_attention_kernels, splash in interpret mode)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcx import attention, positions
from lcx.attention.library import dense_attention
from lcx.model import ModelConfig, Transformer, token_losses

pytestmark = pytest.mark.skipif(jax.default_backend() == "cpu",
                                reason="runs on an accelerator (benchmarks/accelerator.sh)")
# The fused kernel this backend prefers for schemes without a bias (cuDNN, splash).
FUSED = attention.select("auto", bias=None) if jax.default_backend() != "cpu" else "none"
# The tiled kernels that compute a scheme's bias per tile here: blockwise and lcx's Pallas kernel.
TILED = ("blockwise", "pallas")


@pytest.fixture(autouse=True)
def exact_float32_matmuls():
  """GPUs multiply float32 in TF32 by default; the references here need full float32."""
  with jax.default_matmul_precision("highest"):
    yield


def _inputs(dtype, B=2, L=256, H=4, K=64, packed=True):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, (B, L, H, K)).astype(dtype) for key in keys)
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  seg = None
  if packed:  # two documents per row, split at different places
    seg = jnp.asarray(np.stack([np.arange(L) >= 100, np.arange(L) >= 37]).astype(np.int32))
  return q, k, v, pos, seg


def _loss(fn, q, k, v, pos, seg, bias_fn=None):
  out = fn(q, k, v, q_positions_BQ=pos, k_positions_BK=pos, q_segment_ids_BQ=seg,
           k_segment_ids_BK=seg, bias_fn=bias_fn)
  weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
  return (out.astype(jnp.float32) * weights).sum()


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("implementation", [FUSED, *TILED])
def test_kernel_matches_dense_in_bfloat16(implementation, packed):
  """bfloat16 inputs (what the fused kernels take) against dense in float32 on the same values."""
  q, k, v, pos, seg = _inputs(jnp.bfloat16, packed=packed)
  kernel = attention.make(implementation, requested=implementation)
  grad = lambda fn: jax.jit(jax.value_and_grad(
      lambda *a: _loss(fn, *a, pos, seg), argnums=(0, 1, 2)))
  value, grads = grad(kernel)(q, k, v)
  ref_value, ref_grads = grad(dense_attention)(*(x.astype(jnp.float32) for x in (q, k, v)))
  np.testing.assert_allclose(float(value), float(ref_value), rtol=2e-2, atol=0.5)
  for g, ref in zip(grads, ref_grads):
    g, ref = np.asarray(g, np.float32), np.asarray(ref)
    assert np.abs(g - ref).max() <= 3e-2 * np.abs(ref).max(), implementation


@pytest.mark.parametrize("implementation", TILED)
def test_tiled_bias_with_a_parameter_matches_dense_in_float32(implementation):
  """A bias with a parameter (ALiBi's slopes times a learned factor) through a tiled kernel on
  the device: the value and the parameter's gradient equal dense's."""
  q, k, v, pos, seg = _inputs(jnp.float32)
  slopes = positions.alibi_slopes(4)
  kernel = attention.make(implementation, requested=implementation)
  grad = lambda fn: jax.jit(jax.value_and_grad(lambda s: _loss(
      fn, q, k, v, pos, seg, lambda qp, kp: positions.alibi_bias(qp, kp, slopes * s))))
  (value, g), (ref_value, ref_g) = grad(kernel)(1.0), grad(dense_attention)(1.0)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(g, ref_g, rtol=1e-4)
  assert abs(float(ref_g)) > 1e-3  # the parameter's gradient is not trivially zero


@pytest.mark.parametrize("implementation", ["auto", *TILED[1:]])
@pytest.mark.parametrize("position", [*positions.available(), "p-rope"])
def test_every_scheme_trains_the_same_through_auto_as_through_dense(position, implementation):
  """A whole bfloat16 model with packed documents: loss and every parameter gradient through the
  kernel `auto` picks here (and through the Pallas kernel, for the schemes with a bias) equal
  dense's, a learned bias's gradient included."""
  if implementation == "pallas" and positions.bias_kind(position.removeprefix("p-")) is None:
    pytest.skip("no bias: the Pallas kernel alone is checked above")
  variant = ({"position": "rope", "position_options": positions.RopeOptions(keep=0.75)}
             if position == "p-rope" else {"position": position})

  def loss_and_grads(implementation):
    model = Transformer(ModelConfig(vocab_size=64, d_model=128, n_layers=2, n_heads=2,
                                    head_dim=64, mlp_dim=256, max_len=256, **variant,
                                    attention=implementation, compute_dtype="bfloat16"),
                        rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 257), 0, 64)
    segments = jnp.asarray(np.stack([np.arange(257) >= 150, np.arange(257) >= 40]).astype(
        np.int32))
    starts = jnp.asarray([[0] * 150 + [150] * 107, [0] * 40 + [40] * 217])
    pos = jnp.broadcast_to(jnp.arange(257), (2, 257)) - starts

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1], pos[:, :-1], segments[:, :-1])
      return token_losses(logits, tokens[:, 1:]).mean()

    graphdef, params = nnx.split(model, nnx.Param)
    return jax.jit(jax.value_and_grad(loss))(params)

  (loss, grads), (loss_a, grads_a) = loss_and_grads("dense"), loss_and_grads(implementation)
  np.testing.assert_allclose(loss_a, loss, rtol=2e-2)
  # bfloat16 rounding differs between kernels: each leaf within 5% of its own scale, plus 0.1%
  # of the largest gradient (a leaf whose true gradient is zero, such as FIRE's output offset,
  # which softmax cancels, gets rounding noise).
  largest = max(float(np.abs(np.asarray(g, np.float32)).max()) for g in jax.tree.leaves(grads))
  for (path, g), g_a in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_a)):
    g, g_a = np.asarray(g, np.float32), np.asarray(g_a, np.float32)
    name = jax.tree_util.keystr(path)
    assert np.abs(g_a - g).max() <= 5e-2 * np.abs(g).max() + 1e-3 * largest, name
    if "position" in name and np.abs(g).max() > 1e-3 * largest:  # a learned bias's arrives
      assert np.abs(g_a).max() > 0.5 * np.abs(g).max(), name
