"""The decoder-only transformer (Flax NNX): pre-norm blocks, RMSNorm, SwiGLU or GELU MLP.

Shape legend for names such as x_BLD:
  B batch, L sequence length, D d_model, H heads, G key/value heads (H for multi-head
  attention), K head dim, F mlp dim, V vocabulary.
Every parameter carries `logical_axes`; lcx.sharding maps them to the mesh.
"""
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lcx import attention, positions, sharding
from lcx import memory as memory_lib
from lcx.memory import KVCache
from lcx.model import temperature as temperature_lib
from lcx.model.config import REMAT_POLICIES, ModelConfig
from lcx.sharding import shard

# Under context parallelism (mesh.context > 1) the length is sharded too, and every sequence
# enters the model in the load-balanced order (lcx.sharding.to_context_order).
BATCH_ACTIVATION = ("batch", "length", None)


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


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, attend, rngs, cache_attend=None, temperature=False,
               local=False):
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    out_std = 1.0 / math.sqrt(H * K * 2 * cfg.n_layers)
    self.wq = _param(rngs, (D, H, K), ("embed", "heads", None), D ** -0.5, cfg.param_dtype)
    # G <= H key/value heads (grouped-query attention), sharded by their own logical axis
    self.wk = _param(rngs, (D, G, K), ("embed", "kv_heads", None), D ** -0.5, cfg.param_dtype)
    self.wv = _param(rngs, (D, G, K), ("embed", "kv_heads", None), D ** -0.5, cfg.param_dtype)
    self.wo = _param(rngs, (H, K, D), ("heads", None, "embed"), out_std, cfg.param_dtype)
    # a local layer's window and chunk (0: none), which every attention call takes
    self.local = dict(window=cfg.window, chunk=cfg.chunk) if local else {}
    self.attend = attend
    self.context_exchange = dict(exchange=cfg.context_exchange, block=cfg.attention_block)
    self.cache_attend = cache_attend
    # this layer's attention temperature (None: none), with SSMax's learned s per head
    self.temperature = cfg.temperature if temperature else None
    if temperature and cfg.temperature.kind == "ssmax":
      self.ssmax_scale = nnx.Param(jnp.full((H,), cfg.temperature.ssmax_init,
                                            jnp.dtype(cfg.param_dtype)), logical_axes=("heads",))
    self.qk_norm = cfg.qk_norm
    if cfg.qk_norm:
      self.q_norm = RMSNorm(K, cfg.norm_eps, cfg.param_dtype)
      self.k_norm = RMSNorm(K, cfg.norm_eps, cfg.param_dtype)

  def _qkv(self, x_BLD, positions_BL, scheme, length=None):
    q_BLHK, k_BLHK = project(x_BLD, self.wq[...]), project(x_BLD, self.wk[...])
    v_BLHK = project(x_BLD, self.wv[...])
    if self.qk_norm:
      q_BLHK, k_BLHK = self.q_norm(q_BLHK), self.k_norm(k_BLHK)
    q_BLHK, k_BLHK = scheme.rotate(q_BLHK, k_BLHK, positions_BL, length)
    if self.temperature is not None:
      ssmax_H = self.ssmax_scale[...] if self.temperature.kind == "ssmax" else None
      scale_BLH = temperature_lib.query_scale(self.temperature, positions_BL, ssmax_H, length)
      q_BLHK = (q_BLHK.astype(jnp.float32) * scale_BLH[..., None]).astype(q_BLHK.dtype)
    return q_BLHK, k_BLHK, v_BLHK

  def __call__(self, x_BLD, positions_BL, segment_ids_BL, scheme: positions.PositionScheme,
               layer):
    """`layer`: this layer's index (an int, or a scalar under a scan), for per-layer biases."""
    q_BLHK, k_BLHK, v_BLHK = self._qkv(x_BLD, positions_BL, scheme)
    context = sharding.context_size()
    rows = _row_bias(scheme.log_gates(x_BLD, layer), segment_ids_BL, x_BLD.shape[1], context)
    attend = self.attend
    if context > 1:
      attend = functools.partial(attention.attend_over_context, self.attend,
                                 **self.context_exchange)
    o_BLHK = attend(q_BLHK, k_BLHK, v_BLHK, q_positions_BQ=positions_BL,
                    k_positions_BK=positions_BL, q_segment_ids_BQ=segment_ids_BL,
                    k_segment_ids_BK=segment_ids_BL, bias_fn=scheme.bias_fn(layer), **self.local,
                    **rows)
    return project(o_BLHK, self.wo[...], in_dims=2)

  def with_memory(self, x_BCD, positions_BC, segment_ids_BC, scheme, layer, mechanism,
                  layer_state):
    """One segment whose queries also see the mechanism's entries for this layer (placed before
    the segment's own keys): (output, the layer's next state)."""
    q_BCHK, k_BCHK, v_BCHK = self._qkv(x_BCD, positions_BC, scheme)
    gates_BCH = scheme.log_gates(x_BCD, layer)  # a bias made from the data: the memory keeps them
    o_BCHK = mechanism.attend(layer_state, layer, q_BCHK, k_BCHK, v_BCHK, positions_BC,
                              segment_ids_BC, attend=self.attend, cache_attend=self.cache_attend,
                              bias_fn=scheme.bias_fn(layer), log_gates_BCH=gates_BCH)
    layer_state = mechanism.update(layer_state, k_BCHK, v_BCHK, positions_BC, segment_ids_BC,
                                   layer, log_gates_BCH=gates_BCH)
    return project(o_BCHK, self.wo[...], in_dims=2), layer_state

  def extend(self, x_BCD, positions_BC, scheme, cache: KVCache, layer: int):
    """C new tokens after those in the cache: (output, the cache with them appended). A local
    layer's cache holds its window only: the new tokens attend over it and themselves, and it
    keeps the newest of them all."""
    q_BCHK, k_BCHK, v_BCHK = self._qkv(x_BCD, positions_BC, scheme,
                                       length=cache.context or cache.size)
    ones = jnp.ones(positions_BC.shape, jnp.int32)
    gates_BCH = scheme.log_gates(x_BCD, layer)
    seen = (cache.concat(k_BCHK, v_BCHK, positions_BC, ones, gates_BCH) if self.local
            else cache.append(k_BCHK, v_BCHK, positions_BC, gates_BCH))
    # the cache keeps each key's log gate: the sums over its window are the bias's differences
    rows = _row_bias(None if gates_BCH is None else seen.log_gates_BSH, seen.segment_ids_BS,
                     positions_BC.shape[1])
    o_BCHK = self.cache_attend(q_BCHK, seen.k_BSHK, seen.v_BSHK, q_positions_BQ=positions_BC,
                               k_positions_BK=seen.positions_BS, q_segment_ids_BQ=ones,
                               k_segment_ids_BK=seen.segment_ids_BS,
                               bias_fn=scheme.bias_fn(layer), **self.local, **rows)
    return project(o_BCHK, self.wo[...], in_dims=2), seen.last(cache.size)


def _row_bias(log_gates_BKH, segment_ids_BK, q_len: int, context: int = 1) -> dict:
  """The kernels' `row_bias` argument from the keys' log forget gates (a bias made from the data,
  FoX's); no argument where the scheme makes none, since kernels without one take none. Its sums
  run along the sequence in natural order: a sequence in the load-balanced order of `context`
  devices is put in natural order for them (a few numbers per token) and the bias back in its
  order."""
  if log_gates_BKH is None:
    return {}
  natural = lambda x: sharding.from_context_order(x, context, axis=1)
  if segment_ids_BK is not None:
    segment_ids_BK = natural(segment_ids_BK)
  rows = positions.gate_row_bias(natural(log_gates_BKH), segment_ids_BK, q_len)
  return dict(row_bias=tuple(sharding.to_context_order(x, context, axis=2) for x in rows))


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

  def __init__(self, cfg: ModelConfig, attend, cache_attend=None, *, rngs, layer: int = 0,
               temperature=False):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    self.attn = Attention(cfg, attend, rngs, cache_attend, temperature,
                          local=cfg.local_layer(layer))
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    self.mlp = Mlp(cfg, rngs)

  def __call__(self, x_BLD, positions_BL, segment_ids_BL, scheme, layer):
    x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), positions_BL, segment_ids_BL, scheme, layer)
    x_BLD = x_BLD + self.mlp(self.mlp_norm(x_BLD))
    return shard(x_BLD, BATCH_ACTIVATION)

  def with_memory(self, x_BCD, positions_BC, segment_ids_BC, scheme, layer, mechanism,
                  layer_state):
    attended, layer_state = self.attn.with_memory(self.attn_norm(x_BCD), positions_BC,
                                                  segment_ids_BC, scheme, layer, mechanism,
                                                  layer_state)
    x_BCD = x_BCD + attended
    x_BCD = x_BCD + self.mlp(self.mlp_norm(x_BCD))
    return shard(x_BCD, BATCH_ACTIVATION), layer_state

  def extend(self, x_BCD, positions_BC, scheme, cache: KVCache, layer: int):
    attended, cache = self.attn.extend(self.attn_norm(x_BCD), positions_BC, scheme, cache, layer)
    x_BCD = x_BCD + attended
    return x_BCD + self.mlp(self.mlp_norm(x_BCD)), cache


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embedding = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), 1.0,
                            cfg.param_dtype)
    pattern = cfg.layer_positions()
    schemes = [positions.make(name, cfg.position_config(options), rngs=rngs)
               for name, options in pattern]
    if cfg.position_pattern:  # layer i takes entry i % len(pattern)
      self.position_layers = nnx.List(schemes)
    else:  # one scheme for every layer (its parameters where checkpoints have always had them)
      self.position = schemes[0]
    self.memory = memory_lib.make(cfg.memory, cfg.memory_config(), rngs=rngs)
    # The one place kernels are chosen: per pattern entry, since each takes its scheme's bias,
    # and for local layers among the kernels that take a window (auto then picks per call from
    # the lengths, and logs it).
    def attends(layer):
      choice = attention.choose(cfg.attention, scheme=pattern[layer % len(pattern)][0],
                                block=cfg.attention_block, local=cfg.local_layer(layer))
      return choice, attention.make(choice), attention.make(choice, cache=True)

    period = [attends(layer) for layer in range(min(cfg.layer_period, cfg.n_layers))]
    self.attention_choice = period[0][0]
    self.blocks = nnx.List([
        Block(cfg, *period[i % len(period)][1:], rngs=rngs, layer=i,
              temperature=cfg.temperature.applies_to(pattern[i % len(pattern)][0]))
        for i in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                         cfg.d_model ** -0.5, cfg.param_dtype)

  @property
  def schemes(self) -> list:
    """The position scheme of each pattern entry (one without a pattern): layer i's is
    schemes[i % len(schemes)]."""
    return list(self.position_layers) if self.cfg.position_pattern else [self.position]

  def check_length(self, length: int) -> None:
    """ValueError if a layer's scheme cannot represent sequences of `length` tokens."""
    for scheme in self.schemes:
      scheme.check_length(length)

  def __call__(self, tokens_BL, positions_BL, segment_ids_BL=None):
    """Next-token logits (float32) for tokens at explicit integer positions. With
    model.segment_len set, the tokens run as consecutive segments with the memory mechanism's
    state carried from one to the next, starting empty."""
    if not self.cfg.segment_len:  # the plain model
      return self.unembed(self.features(tokens_BL, positions_BL, segment_ids_BL))
    self.check_length(tokens_BL.shape[1])
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones(tokens_BL.shape, jnp.int32)
    return self.segments(tokens_BL, positions_BL, segment_ids_BL,
                         self.memory.init_state(tokens_BL.shape[0]))[0]

  def losses(self, tokens_BL, positions_BL, targets_BL, segment_ids_BL=None, *,
             predictions: bool = False):
    """Cross-entropy (B, L) of each target token, and with predictions=True also the argmax
    prediction (B, L) of each. Past LOGITS_SLICE positions the plain model's logits are made and
    consumed a slice at a time (sliced_head)."""
    if self.cfg.segment_len or tokens_BL.shape[1] <= LOGITS_SLICE:
      logits = self(tokens_BL, positions_BL, segment_ids_BL)
      losses = token_losses(logits, targets_BL)
      return (losses, jnp.argmax(logits, axis=-1).astype(jnp.int32)) if predictions else losses
    return sliced_head(self.unembed, self.features(tokens_BL, positions_BL, segment_ids_BL),
                       targets_BL, predictions=predictions)

  def features(self, tokens_BL, positions_BL, segment_ids_BL=None):
    """The plain model's last normalized hidden states (B, L, D): logits are unembed() of them."""
    self.check_length(tokens_BL.shape[1])
    return self.final_norm(run_blocks(self.blocks, self._embed(tokens_BL, positions_BL),
                                      positions_BL, segment_ids_BL, self.schemes,
                                      period=self.cfg.layer_period,
                                      remat=self.cfg.remat, scan=self.cfg.scan_layers))

  def _embed(self, tokens_BL, positions_BL):
    x_BLD = jnp.take(self.embedding[...], tokens_BL, axis=0).astype(self.cfg.compute_dtype)
    # A pattern holds no embedding scheme (lcx.positions.embeds), so its first entry's is that.
    return shard(self.schemes[0].embed(x_BLD, positions_BL), BATCH_ACTIVATION)

  def segments(self, tokens_BL, positions_BL, segment_ids_BL, state):
    """(logits, state after the last segment): the tokens as consecutive segments of
    model.segment_len (the last one padded), one lax.scan over them with the state carried."""
    B, L = tokens_BL.shape
    C = min(self.cfg.segment_len or L, L)
    n = -(-L // C)
    initial = state
    pad = lambda x: jnp.pad(x, ((0, 0), (0, n * C - L)))  # padding: segment id 0, masked
    by_segment = lambda x: pad(x).reshape(B, n, C).swapaxes(0, 1)

    def one(state, inputs):
      tokens_BC, positions_BC, segment_ids_BC = inputs
      if self.cfg.memory_reset:
        state = initial
      x_BSD, positions_BS, segment_ids_BS = self.memory.wrap(
          state, self._embed(tokens_BC, positions_BC), positions_BC, segment_ids_BC)
      x_BSD, layers = run_blocks(self.blocks, x_BSD, positions_BS, segment_ids_BS, self.schemes,
                                 period=self.cfg.layer_period,
                                 remat=self.cfg.remat, scan=self.cfg.scan_layers,
                                 mechanism=self.memory, memory_states=state["layers"])
      x_BCD, state = self.memory.unwrap({**state, "layers": layers}, x_BSD)
      return state, self._logits(x_BCD)

    state, logits_NBCV = jax.lax.scan(one, state, (by_segment(tokens_BL),
                                                   by_segment(positions_BL),
                                                   by_segment(segment_ids_BL)))
    return logits_NBCV.swapaxes(0, 1).reshape(B, n * C, -1)[:, :L], state

  def _logits(self, x_BLD):
    return self.unembed(self.final_norm(x_BLD))

  def unembed(self, x_BLD):
    """Logits (float32) of normalized hidden states."""
    if self.cfg.tie_embeddings:
      # By default scaled so that unit-variance embeddings give unit-variance logits at init.
      w_DV = self.embedding[...].T * (self.cfg.tied_logit_scale or self.cfg.d_model ** -0.5)
    else:
      w_DV = self.head[...]
    return project(x_BLD, w_DV).astype(jnp.float32)

  def empty_caches(self, batch: int, size: int) -> list[KVCache]:
    """One empty cache per layer with room for `size` tokens, the whole window to be decoded; a
    local layer's for its window or chunk only (its memory constant in `size`)."""
    self.check_length(size)
    span = self.cfg.window or self.cfg.chunk
    gate_heads = self.cfg.n_heads if self.cfg.makes_gates else 0  # keys keep their log gates
    return [KVCache.empty(batch, min(size, span) if block.attn.local else size, self.cfg.kv_heads,
                          self.cfg.head_dim, jnp.dtype(self.cfg.compute_dtype), context=size,
                          gate_heads=gate_heads)
            for block in self.blocks]

  def extend(self, tokens_BC, positions_BC, caches: list[KVCache]):
    """Logits of C tokens that follow those in the caches, and the caches with them added. A
    prompt is one call on empty caches, each decoded token one more; the logits equal those of
    the full forward over the window (tests/test_decode.py)."""
    x_BCD = self._embed(tokens_BC, positions_BC)
    schemes = self.schemes
    new_caches = []
    for layer, (block, cache) in enumerate(zip(self.blocks, caches)):
      x_BCD, cache = block.extend(x_BCD, positions_BC, schemes[layer % len(schemes)], cache,
                                  layer)
      new_caches.append(cache)
    return self._logits(x_BCD), new_caches


def _block_fn(graphdef, scheme_graphdef, remat: str, mechanism_graphdef=None):
  """A block as a pure function (x, block state, scheme state, positions, segment ids, layer,
  mechanism state, layer memory) -> (x, the layer's next memory), recomputed in the backward pass
  as far as the remat policy says. Modules enter as state and are rebuilt inside, so the same
  function serves a Python loop and a lax.scan. Without a mechanism the memory stays None."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat={remat!r} is unknown; allowed: {', '.join(REMAT_POLICIES)}")

  def block_fn(x_BLD, state, scheme_state, positions_BL, segment_ids_BL, layer, mechanism_state,
               layer_memory):
    block, scheme = nnx.merge(graphdef, state), nnx.merge(scheme_graphdef, scheme_state)
    if mechanism_graphdef is None:
      return block(x_BLD, positions_BL, segment_ids_BL, scheme, layer), None
    return block.with_memory(x_BLD, positions_BL, segment_ids_BL, scheme, layer,
                             nnx.merge(mechanism_graphdef, mechanism_state), layer_memory)

  if remat == "none":
    return block_fn
  return jax.checkpoint(block_fn, policy=REMAT_POLICIES[remat])


def run_blocks(blocks, x_BLD, positions_BL, segment_ids_BL, schemes, *, remat: str = "none",
               scan: bool = False, mechanism=None, memory_states=None, period: int = 0):
  """The blocks in order, layer i with position scheme schemes[i % len(schemes)] (a per-layer
  pattern; one scheme for all without one); `period` (default len(schemes)): after how many
  layers the blocks' graphs repeat (a local/global pattern too). With scan, one lax.scan over the
  repeats of the period, each step its blocks in order with their parameters stacked by place:
  compile time stays flat in depth. The parameters stay one module per layer either way
  (checkpoints are the same with and without scan); stacking them copies the block weights once
  per step, which is cheap next to the step. With a memory mechanism each block also takes its
  layer's memory (memory_states, one per layer), and the result is (x, the layers' next
  memories)."""
  P = period or len(schemes)  # layer i's graph is block i % P's, its scheme i % len(schemes)'s
  mechanism_graphdef, mechanism_state = (None, None) if mechanism is None else nnx.split(mechanism)
  # The blocks at one place of the period share one graph (their kernel, window); the schemes
  # enter as state.
  block_fns = [_block_fn(nnx.split(blocks[p])[0], nnx.split(schemes[p % len(schemes)])[0],
                         remat, mechanism_graphdef) for p in range(min(P, len(blocks)))]
  scheme_states = [nnx.split(scheme)[1] for scheme in schemes]
  states = [nnx.state(b) for b in blocks]
  memories = [None] * len(states) if mechanism is None else list(memory_states)
  apply = lambda p, x, state, memory, layer: block_fns[p](
      x, state, scheme_states[p % len(schemes)], positions_BL, segment_ids_BL, layer,
      mechanism_state, memory)
  if not scan:
    for layer, state in enumerate(states):
      x_BLD, memories[layer] = apply(layer % P, x_BLD, state, memories[layer], layer)
  else:
    stack = lambda trees: jax.tree.map(lambda *layers: jnp.stack(layers), *trees)

    def step(x_BLD, inputs):
      states_P, memories_P, repeat = inputs
      out = []
      for p in range(P):
        x_BLD, memory = apply(p, x_BLD, states_P[p], memories_P[p], repeat * P + p)
        out.append(memory)
      return x_BLD, out

    x_BLD, stacked = jax.lax.scan(step, x_BLD, (
        [stack(states[p::P]) for p in range(P)], [stack(memories[p::P]) for p in range(P)],
        jnp.arange(len(states) // P)))
    memories = [jax.tree.map(lambda a, i=i: a[i // P], stacked[i % P])
                for i in range(len(states))]
  return x_BLD if mechanism is None else (x_BLD, memories)


# Longer windows make their logits this many positions at a time: a 32K x 49K float32 logit array
# is 6 GiB, and in training its gradient as much again.
LOGITS_SLICE = 2048


def sliced_head(unembed, x_BLD, targets_BL, *, predictions: bool = False):
  """token_losses (and with predictions=True the argmax) of unembed(x), LOGITS_SLICE positions at
  a time: a lax.map over slices, each under jax.checkpoint, so one slice's logits live at once in
  the forward pass and again in the backward one (which remakes them from the slice's inputs).
  A sequence sharded over C devices (context parallelism) is sliced within each device's part:
  its rows viewed as B*C rows of L/C tokens, so that no device makes another's logits."""
  context = sharding.context_size()
  if context == 1:
    return _sliced_head(unembed, x_BLD, targets_BL, predictions)
  B, L, D = x_BLD.shape
  out = _sliced_head(unembed, x_BLD.reshape(B * context, L // context, D),
                     targets_BL.reshape(B * context, L // context), predictions)
  return jax.tree.map(lambda a: a.reshape(B, L), out)


def _sliced_head(unembed, x_BLD, targets_BL, predictions: bool):
  B, L, D = x_BLD.shape
  S = LOGITS_SLICE
  n = -(-L // S)
  pad = n * S - L
  x_NBSD = jnp.pad(x_BLD, ((0, 0), (0, pad), (0, 0))).reshape(B, n, S, D).swapaxes(0, 1)
  t_NBS = jnp.pad(targets_BL, ((0, 0), (0, pad))).reshape(B, n, S).swapaxes(0, 1)

  @jax.checkpoint
  def one(slice_):
    logits = unembed(slice_[0])
    losses = token_losses(logits, slice_[1])
    return (losses, jnp.argmax(logits, axis=-1).astype(jnp.int32)) if predictions else losses

  unslice = lambda a: a.swapaxes(0, 1).reshape(B, n * S)[:, :L]
  return jax.tree.map(unslice, jax.lax.map(one, (x_NBSD, t_NBS)))


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


def abstract_model(model_cfg: ModelConfig):
  """(graphdef, abstract params) without allocating anything."""
  model = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
  return nnx.split(model, nnx.Param)
