"""The decoder-only transformer (Flax NNX): pre-norm blocks, RMSNorm, SwiGLU or GELU MLP.

Shape legend for names such as x_BLD:
  B batch, L sequence length, D d_model, H heads, K head dim, F mlp dim, V vocabulary.
Every parameter carries `logical_axes`; lcx.sharding maps them to the mesh.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lcx import attention, positions
from lcx.sharding import shard

BATCH_ACTIVATION = ("batch", None, None)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 256
  mlp: str = "swiglu"
  tie_embeddings: bool = True
  position: str = "rope"
  max_len: int = 128
  attention: str = "auto"  # lcx.attention.CHOICES; "auto" picks per backend and scheme
  attention_block: int = 128  # blockwise attention: query and key tile length (128: fastest on CPU)
  remat: str = "none"  # what each block keeps for the backward pass: none (all), full, dots
  scan_layers: bool = False  # run the blocks as one lax.scan: compile time constant in depth
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  norm_eps: float = 1e-6
  rope: positions.RopeConfig = positions.RopeConfig()
  position_options: object = None  # the scheme's own options (lcx.positions: Options), if any

  def position_config(self) -> positions.PositionConfig:
    return positions.PositionConfig(d_model=self.d_model, n_heads=self.n_heads,
                                    head_dim=self.head_dim, max_len=self.max_len,
                                    n_layers=self.n_layers,
                                    param_dtype=self.param_dtype, rope=self.rope,
                                    options=self.position_options)


def _param(rngs, shape, axes, std, dtype):
  return nnx.Param(nnx.initializers.normal(stddev=std)(rngs.params(), shape, jnp.dtype(dtype)),
                   logical_axes=axes)


def project(x, w, in_dims: int = 1):
  """Contracts the last `in_dims` axes of x with the first of w, as one 2-D matmul.

  Flattening to (tokens, features) runs markedly faster on CPU than a 3-D dot_general.
  """
  lead, k = x.shape[: x.ndim - in_dims], math.prod(x.shape[x.ndim - in_dims:])
  out = w.shape[in_dims:]
  y = x.reshape(-1, k) @ w.astype(x.dtype).reshape(k, math.prod(out))
  return y.reshape(*lead, *out)


class RMSNorm(nnx.Module):

  def __init__(self, dim, eps, dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), jnp.dtype(dtype)), logical_axes=(None,))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """One layer's rotated keys and values in a buffer of S slots, newest at the end: a block of
  queries appended to it is then causal by index, as the kernels define it. Slots never written
  hold valid=0 (a segment id no query has), so they are masked out."""
  k_BSHK: jax.Array
  v_BSHK: jax.Array
  positions_BS: jax.Array
  valid_BS: jax.Array

  @classmethod
  def empty(cls, batch: int, size: int, heads: int, head_dim: int, dtype) -> "KVCache":
    zeros = jnp.zeros((batch, size, heads, head_dim), dtype)
    return cls(zeros, zeros, jnp.zeros((batch, size), jnp.int32), jnp.zeros((batch, size), jnp.int32))

  @property
  def size(self) -> int:
    return self.k_BSHK.shape[1]

  def append(self, k_BCHK, v_BCHK, positions_BC) -> "KVCache":
    """The oldest C slots dropped, the new entries written at the end."""
    push = lambda old, new: jnp.concatenate([old[:, new.shape[1]:], new.astype(old.dtype)], axis=1)
    return KVCache(push(self.k_BSHK, k_BCHK), push(self.v_BSHK, v_BCHK),
                   push(self.positions_BS, positions_BC),
                   push(self.valid_BS, jnp.ones(positions_BC.shape, jnp.int32)))


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, attend, rngs, cache_attend=None):
    D, H, K = cfg.d_model, cfg.n_heads, cfg.head_dim
    out_std = 1.0 / math.sqrt(H * K * 2 * cfg.n_layers)
    self.wq = _param(rngs, (D, H, K), ("embed", "heads", None), D ** -0.5, cfg.param_dtype)
    self.wk = _param(rngs, (D, H, K), ("embed", "heads", None), D ** -0.5, cfg.param_dtype)
    self.wv = _param(rngs, (D, H, K), ("embed", "heads", None), D ** -0.5, cfg.param_dtype)
    self.wo = _param(rngs, (H, K, D), ("heads", None, "embed"), out_std, cfg.param_dtype)
    self.attend = attend
    self.cache_attend = cache_attend

  def _qkv(self, x_BLD, positions_BL, scheme, length=None):
    q_BLHK, k_BLHK = project(x_BLD, self.wq[...]), project(x_BLD, self.wk[...])
    v_BLHK = project(x_BLD, self.wv[...])
    q_BLHK, k_BLHK = scheme.rotate(q_BLHK, k_BLHK, positions_BL, length)
    return q_BLHK, k_BLHK, v_BLHK

  def __call__(self, x_BLD, positions_BL, segment_ids_BL, scheme: positions.PositionScheme,
               layer):
    """`layer`: this layer's index (an int, or a scalar under a scan), for per-layer biases."""
    q_BLHK, k_BLHK, v_BLHK = self._qkv(x_BLD, positions_BL, scheme)
    o_BLHK = self.attend(q_BLHK, k_BLHK, v_BLHK, q_positions_BQ=positions_BL,
                         k_positions_BK=positions_BL, q_segment_ids_BQ=segment_ids_BL,
                         k_segment_ids_BK=segment_ids_BL,
                         bias_fn=scheme.bias_fn(layer))
    return project(o_BLHK, self.wo[...], in_dims=2)

  def extend(self, x_BCD, positions_BC, scheme, cache: KVCache, layer: int):
    """C new tokens after those in the cache: (output, the cache with them appended)."""
    q_BCHK, k_BCHK, v_BCHK = self._qkv(x_BCD, positions_BC, scheme, length=cache.size)
    cache = cache.append(k_BCHK, v_BCHK, positions_BC)
    o_BCHK = self.cache_attend(q_BCHK, cache.k_BSHK, cache.v_BSHK, q_positions_BQ=positions_BC,
                               k_positions_BK=cache.positions_BS,
                               q_segment_ids_BQ=jnp.ones(positions_BC.shape, jnp.int32),
                               k_segment_ids_BK=cache.valid_BS, bias_fn=scheme.bias_fn(layer))
    return project(o_BCHK, self.wo[...], in_dims=2), cache


class Mlp(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs):
    D, F = cfg.d_model, cfg.mlp_dim
    if cfg.mlp not in ("swiglu", "gelu"):
      raise ValueError(f"model.mlp={cfg.mlp!r} is unknown; allowed: swiglu, gelu")
    self.gated = cfg.mlp == "swiglu"
    self.w_up = _param(rngs, (D, F), ("embed", "mlp"), D ** -0.5, cfg.param_dtype)
    if self.gated:
      self.w_gate = _param(rngs, (D, F), ("embed", "mlp"), D ** -0.5, cfg.param_dtype)
    self.w_down = _param(rngs, (F, D), ("mlp", "embed"), (F * 2 * cfg.n_layers) ** -0.5,
                         cfg.param_dtype)

  def __call__(self, x_BLD):
    up_BLF = project(x_BLD, self.w_up[...])
    if self.gated:
      h_BLF = jax.nn.silu(project(x_BLD, self.w_gate[...])) * up_BLF
    else:
      h_BLF = jax.nn.gelu(up_BLF)
    return project(h_BLF, self.w_down[...])


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, attend, rngs, cache_attend=None):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    self.attn = Attention(cfg, attend, rngs, cache_attend)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    self.mlp = Mlp(cfg, rngs)

  def __call__(self, x_BLD, positions_BL, segment_ids_BL, scheme, layer):
    x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), positions_BL, segment_ids_BL, scheme, layer)
    x_BLD = x_BLD + self.mlp(self.mlp_norm(x_BLD))
    return shard(x_BLD, BATCH_ACTIVATION)

  def extend(self, x_BCD, positions_BC, scheme, cache: KVCache, layer: int):
    attended, cache = self.attn.extend(self.attn_norm(x_BCD), positions_BC, scheme, cache, layer)
    x_BCD = x_BCD + attended
    return x_BCD + self.mlp(self.mlp_norm(x_BCD)), cache


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embedding = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), 1.0,
                            cfg.param_dtype)
    self.position = positions.make(cfg.position, cfg.position_config(), rngs=rngs)
    # The one place the kernel is chosen (auto logs what it passed over).
    self.attention_implementation = attention.select(cfg.attention,
                                                     bias=positions.bias_kind(cfg.position))
    attend = attention.make(self.attention_implementation, requested=cfg.attention,
                            block=cfg.attention_block)
    cache_attend = attention.make_for_cache(self.attention_implementation,
                                            block=cfg.attention_block)
    self.blocks = nnx.List([Block(cfg, attend, rngs, cache_attend)
                            for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                         cfg.d_model ** -0.5, cfg.param_dtype)

  def __call__(self, tokens_BL, positions_BL, segment_ids_BL=None):
    """Next-token logits (float32) for tokens at explicit integer positions."""
    dtype = jnp.dtype(self.cfg.compute_dtype)
    self.position.check_length(tokens_BL.shape[1])
    x_BLD = jnp.take(self.embedding[...], tokens_BL, axis=0).astype(dtype)
    x_BLD = shard(self.position.embed(x_BLD, positions_BL), BATCH_ACTIVATION)
    x_BLD = run_blocks(self.blocks, x_BLD, positions_BL, segment_ids_BL, self.position,
                       remat=self.cfg.remat, scan=self.cfg.scan_layers)
    return self._logits(x_BLD)

  def _logits(self, x_BLD):
    x_BLD = self.final_norm(x_BLD)
    if self.cfg.tie_embeddings:
      # Scaled so that unit-variance embeddings give unit-variance logits at init.
      w_DV = self.embedding[...].T * self.cfg.d_model ** -0.5
    else:
      w_DV = self.head[...]
    return project(x_BLD, w_DV).astype(jnp.float32)

  def empty_caches(self, batch: int, size: int) -> list[KVCache]:
    """One empty cache per layer with room for `size` tokens: the whole window to be decoded."""
    self.position.check_length(size)
    return [KVCache.empty(batch, size, self.cfg.n_heads, self.cfg.head_dim,
                          jnp.dtype(self.cfg.compute_dtype)) for _ in self.blocks]

  def extend(self, tokens_BC, positions_BC, caches: list[KVCache]):
    """Logits of C tokens that follow those in the caches, and the caches with them added. A
    prompt is one call on empty caches, each decoded token one more; the logits equal those of
    the full forward over the window (tests/test_decode.py)."""
    dtype = jnp.dtype(self.cfg.compute_dtype)
    x_BCD = jnp.take(self.embedding[...], tokens_BC, axis=0).astype(dtype)
    x_BCD = self.position.embed(x_BCD, positions_BC)
    new_caches = []
    for layer, (block, cache) in enumerate(zip(self.blocks, caches)):
      x_BCD, cache = block.extend(x_BCD, positions_BC, self.position, cache, layer)
      new_caches.append(cache)
    return self._logits(x_BCD), new_caches


REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each block's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def _block_fn(graphdef, scheme_graphdef, remat: str):
  """A block as a pure function (x, block state, scheme state, positions, segment ids, layer) -> x,
  recomputed in the backward pass as far as the remat policy says. Modules enter as state and are
  rebuilt inside, so the same function serves a Python loop and a lax.scan."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat={remat!r} is unknown; allowed: {', '.join(REMAT_POLICIES)}")

  def block_fn(x_BLD, state, scheme_state, positions_BL, segment_ids_BL, layer):
    block, scheme = nnx.merge(graphdef, state), nnx.merge(scheme_graphdef, scheme_state)
    return block(x_BLD, positions_BL, segment_ids_BL, scheme, layer)

  if remat == "none":
    return block_fn
  return jax.checkpoint(block_fn, policy=REMAT_POLICIES[remat])


def run_blocks(blocks, x_BLD, positions_BL, segment_ids_BL, scheme, *, remat: str = "none",
               scan: bool = False):
  """The blocks in order. With scan, one lax.scan over their stacked parameters: compile time
  stays flat in depth. The parameters stay one module per layer either way (checkpoints are the
  same with and without scan); stacking them copies the block weights once per step, which is
  cheap next to the step."""
  graphdef, _ = nnx.split(blocks[0])
  scheme_graphdef, scheme_state = nnx.split(scheme)
  block_fn = _block_fn(graphdef, scheme_graphdef, remat)
  states = [nnx.state(b) for b in blocks]
  if not scan:
    for layer, state in enumerate(states):
      x_BLD = block_fn(x_BLD, state, scheme_state, positions_BL, segment_ids_BL, layer)
    return x_BLD
  stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *states)

  def step(x_BLD, state_and_layer):
    state, layer = state_and_layer
    return block_fn(x_BLD, state, scheme_state, positions_BL, segment_ids_BL, layer), None

  return jax.lax.scan(step, x_BLD, (stacked, jnp.arange(len(states))))[0]


def token_losses(logits_BLV, targets_BL):
  """Cross-entropy of each target token, (B, L) float32."""
  logz = jax.nn.logsumexp(logits_BLV, axis=-1)
  picked = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  return logz - picked


def count_params(params_state) -> dict[str, int]:
  """Total and non-embedding parameter counts (the latter excludes embedding/unembedding tables)."""
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params_state):
    n = math.prod(leaf.shape)
    total += n
    keys = {getattr(k, "key", None) for k in path}
    if keys & {"embedding", "head", "table"}:
      embedding += n
  return {"total": total, "non_embedding": total - embedding}
