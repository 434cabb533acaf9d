"""Attention implementations behind one signature.

  attend(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
         q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True) -> o_BQHK

Causality is by index: query i sees keys j <= i + (K - Q), so a query block aligned with the end
of the keys (a cache) is handled too. Segment ids, when given, keep packed documents apart.
`bias_fn(q_positions, k_positions) -> (B, H, Q, K)` is the position scheme's bias (a
lcx.positions.Bias, which says what it is); a blockwise kernel calls it per tile, the dense
reference once. Which kernel takes which bias is `accepts`: the library kernels (cuDNN on GPU,
splash on TPU) take none, so schemes with one run blockwise there, or through lcx's own Pallas
kernel (`pallas`: GPU, and the interpreter on a CPU), which evaluates any bias per tile with its
parameters' gradient; the native CPU kernel takes a fixed bias in the linear closed form (ALiBi's),
which it computes itself from the slopes, and refuses learned ones, whose gradient it could not
return.
"""
import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp

from lcx import kernel_choice, native, positions
from lcx.blockwise import DEFAULT_BLOCK, blockwise_attention
from lcx.pallas_attention import pallas_attention
from lcx.positions.bias import LINEAR, BiasKind

_MASKED = -1e30  # finite, so a fully masked row gives a uniform softmax rather than NaN


def dense_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                    q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True):
  """Reference implementation: the full (Q, K) score matrix in float32."""
  head_dim = q_BQHK.shape[-1]
  scores_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_BQHK, k_BKHK,
                           preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
  if bias_fn is not None:
    bias = bias_fn(q_positions_BQ, k_positions_BK)
    if bias is not None:
      scores_BHQK = scores_BHQK + bias
  q_len, k_len = q_BQHK.shape[1], k_BKHK.shape[1]
  mask = jnp.ones((1, 1, q_len, k_len), dtype=bool)
  if causal:
    mask = jnp.tril(mask, k=k_len - q_len)
  if q_segment_ids_BQ is not None:
    same = q_segment_ids_BQ[:, :, None] == k_segment_ids_BK[:, None, :]
    mask = mask & same[:, None, :, :]
  scores_BHQK = jnp.where(mask, scores_BHQK, _MASKED)
  probs = jax.nn.softmax(scores_BHQK, axis=-1).astype(v_BKHK.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v_BKHK)


def cudnn_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                    q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True):
  """cuDNN's fused attention (GPU) through jax.nn.dot_product_attention. It takes no positional
  bias computed in the kernel, so schemes with a bias are refused (see `select`)."""
  del q_positions_BQ, k_positions_BK
  if bias_fn is not None:
    raise ValueError("cudnn attention takes no position bias")
  mask = None
  if q_segment_ids_BQ is not None:  # packed documents: a (B, 1, Q, K) boolean mask
    mask = (q_segment_ids_BQ[:, :, None] == k_segment_ids_BK[:, None, :])[:, None]
  if causal and q_BQHK.shape[1] != k_BKHK.shape[1]:
    raise ValueError("cudnn attention needs as many queries as keys for a causal mask")
  return jax.nn.dot_product_attention(q_BQHK, k_BKHK, v_BKHK, mask=mask, is_causal=causal,
                                      implementation="cudnn")


def _splash_fits(block: int, q_len: int, k_len: int) -> bool:
  """Splash tiles are multiples of 128 (the TPU's lanes) and must divide both lengths."""
  return block % 128 == 0 and q_len % block == 0 and k_len % block == 0


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, q_len: int, k_len: int, causal: bool, block_q: int, block_k: int,
                   interpret: bool):
  """A splash kernel for one shape (built once: its tile map of the mask is worked out in numpy)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # TPU-only; imported on use
      splash_attention_kernel as splash, splash_attention_mask as masks)
  mask = (masks.CausalMask((q_len, k_len), offset=k_len - q_len) if causal
          else masks.FullMask((q_len, k_len)))
  blocks = splash.BlockSizes(block_q=block_q, block_kv=block_k, block_kv_compute=block_k,
                             block_q_dkv=block_q, block_kv_dkv=block_k,
                             block_kv_dkv_compute=block_k, block_q_dq=block_q, block_kv_dq=block_k)
  kernel = splash.make_splash_mha(masks.MultiHeadMask([mask] * heads), block_sizes=blocks,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)
  return kernel, splash.SegmentIds


def splash_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                     q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True,
                     block: int = DEFAULT_BLOCK, interpret: bool = False):
  """TPU splash attention (a Pallas kernel in jax.experimental that skips fully masked tiles),
  one batch row at a time. It takes no positional bias; `interpret` runs it on CPU (tests)."""
  del q_positions_BQ, k_positions_BK
  if bias_fn is not None:
    raise ValueError("splash attention takes no position bias")
  B, Q, H, K = q_BQHK.shape
  S = k_BKHK.shape[1]
  if not _splash_fits(block, Q, S):
    raise ValueError(f"splash attention needs lengths that are multiples of the tile length "
                     f"(model.attention_block={block}, itself a multiple of 128); got {Q} queries "
                     f"and {S} keys. Use model.attention=blockwise")
  kernel, segment_ids = _splash_kernel(H, Q, S, causal, block, block, interpret)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)  # splash wants (heads, length, head_dim)
  q = heads_first(q_BQHK * jnp.asarray(K ** -0.5, q_BQHK.dtype))  # splash does not scale
  if q_segment_ids_BQ is None:
    o = jax.vmap(kernel)(q, heads_first(k_BKHK), heads_first(v_BKHK))
  else:
    o = jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=segment_ids(qs, ks)))(
        q, heads_first(k_BKHK), heads_first(v_BKHK), q_segment_ids_BQ, k_segment_ids_BK)
  return o.transpose(0, 2, 1, 3)


IMPLEMENTATIONS = {"dense": dense_attention, "blockwise": blockwise_attention,
                   "native": native.native_attention, "cudnn": cudnn_attention,
                   "splash": splash_attention, "pallas": pallas_attention}
CHOICES = (*IMPLEMENTATIONS, "auto")
# The tiled kernels: they take tile lengths (block_q, block_k) and hold one tile of scores at once.
TILED = ("blockwise", "native", "pallas")
# What each implementation can do: the backends it runs on, and the biases it takes (see accepts).
# pallas on a CPU runs in the Pallas interpreter: for checking it, far too slow to train with.
_BACKENDS = {"dense": ("cpu", "gpu", "tpu"), "blockwise": ("cpu", "gpu", "tpu"), "native": ("cpu",),
             "cudnn": ("gpu",), "splash": ("tpu",), "pallas": ("cpu", "gpu", "tpu")}
# The kernels `auto` weighs on each backend where a kernel table measured them (lcx.kernel_choice).
AUTO_CANDIDATES = {"gpu": ("cudnn", "pallas", "blockwise", "dense"),
                   "tpu": ("splash", "pallas", "blockwise", "dense"),
                   "cpu": ("native", "blockwise", "dense")}
# auto's order of preference where nothing was measured (see benchmarks/README.md for the CPU
# figures). pallas is not in it: it is chosen only where a table measured it on the device.
_PREFERENCE = {"gpu": ("cudnn", "blockwise"), "tpu": ("splash", "blockwise"),
               "cpu": ("native", "blockwise")}


def _cannot_run(name: str, backend: str) -> str | None:
  """Why `name` cannot run in this process (the native kernel needs a working C++ compiler)."""
  if name == "native" and backend == jax.default_backend():
    return native.unavailable_reason()
  return None


def accepts(name: str, bias: BiasKind | None) -> str | None:
  """None if implementation `name` takes a scheme's bias of this kind (None: no bias), values and
  parameter gradients; otherwise why not."""
  if bias is None or name in ("dense", "blockwise", "pallas"):  # they call the function per tile,
    # autodiff of it included
    return None
  if name == "native":
    if bias.closed_form != LINEAR:
      return "it computes no bias but the fixed linear form (ALiBi's)"
    if bias.learned:
      return "it returns no gradient for the bias's parameters"
    return None
  return "it takes no position bias"


def check(name: str, *, bias: BiasKind | None, backend: str | None = None) -> None:
  """What can be told of model.attention=name from the config alone (config resolution): a known
  name, one that runs on this backend and takes the scheme's bias. Nothing is compiled or loaded;
  whether a kernel can run in this process is `select`'s, when the model is built."""
  backend = backend or jax.default_backend()
  if name not in CHOICES:
    raise ValueError(f"model.attention={name!r} is unknown; allowed: {', '.join(CHOICES)}")
  if name == "auto":
    return
  if backend not in _BACKENDS[name]:
    raise ValueError(f"model.attention={name!r} runs on {'/'.join(_BACKENDS[name])}, not on "
                     f"{backend}; use auto, dense or blockwise")
  if reason := accepts(name, bias):
    raise ValueError(f"model.attention={name!r} cannot take this position scheme's bias: "
                     f"{reason}; use blockwise (or dense, or auto)")


def select(name: str, *, bias: BiasKind | None, backend: str | None = None) -> str:
  """The implementation model.attention=name runs for a scheme whose bias is of kind `bias`
  (None: no bias): a named one, refused with the reason if it cannot work here; for `auto`, the
  first of its fixed order that takes the scheme here (logging why it passed over one), which
  runs where no kernel table says otherwise (Choice.kernel decides per call). It may build the
  native kernel to find out, so the model calls it once, when it is built."""
  return _select(name, bias, backend or jax.default_backend())


@functools.lru_cache(maxsize=None)
def _select(name: str, bias: BiasKind | None, backend: str) -> str:
  # Cached: models built several times in a process (shapes, init, evaluation) choose once and
  # log once.
  check(name, bias=bias, backend=backend)
  if name != "auto":
    if reason := _cannot_run(name, backend):
      raise ValueError(f"model.attention={name!r} cannot run here: {reason}; use auto or blockwise")
    return name
  log = logging.getLogger("lcx")
  for candidate in _PREFERENCE.get(backend, ("blockwise",)):
    if reason := accepts(candidate, bias):
      log.info("attention=auto: %s cannot take this position scheme's bias (%s)", candidate,
               reason)
    elif reason := _cannot_run(candidate, backend):
      log.warning("attention=auto: %s cannot run here (%s); the next choice runs", candidate,
                  reason)
    else:
      return candidate
  return "blockwise"


def takes_call(name: str, *, q_len: int, k_len: int, packed: bool, causal: bool = True,
               block: int = DEFAULT_BLOCK) -> str | None:
  """Why kernel `name` cannot take one call of these shapes (None: it can); what `auto` checks
  per call, beyond the scheme (accepts) and the backend."""
  if name == "cudnn" and packed:
    return "it keeps packed documents apart only with a (batch, 1, L, L) mask"
  if name == "cudnn" and causal and q_len != k_len:
    return "it needs as many queries as keys under a causal mask"
  if name == "splash" and not _splash_fits(block, q_len, k_len):
    return f"it takes lengths that are multiples of its tile ({block})"
  return None


@dataclasses.dataclass(frozen=True)
class Choice:
  """model.attention resolved for one position scheme on this backend (see `choose`): a named
  kernel runs every call; `auto` picks per call from the lengths and whether documents are
  packed, the fastest measured kernel where a table has one (lcx.kernel_choice), else the first
  of its fixed order that can take the call."""
  requested: str
  scheme: str  # the kernel-table key: the scheme's name, or "none" for a scheme without a bias
  bias: BiasKind | None
  backend: str
  block: int = DEFAULT_BLOCK
  # The measured kernel table auto chooses from (None: its fixed order).
  table: kernel_choice.Table | None = dataclasses.field(default=None, compare=False, hash=False)

  def kernel(self, q_len: int, k_len: int | None = None, *, packed: bool = False,
             causal: bool = True, cache: bool = False) -> str:
    """The kernel a call with q_len queries and k_len keys runs (`cache`: a KV cache's call,
    where only dense and the tiled kernels take queries aligned to the end of the keys)."""
    if self.requested != "auto":
      return self.requested
    k_len = k_len or q_len
    usable, passed = [], []
    for name in AUTO_CANDIDATES.get(self.backend, ("blockwise",)):
      if accepts(name, self.bias) or _cannot_run(name, self.backend):
        continue  # said once, when the model was built (select)
      if cache and name != "dense" and name not in TILED:
        reason = "it takes no queries aligned to the end of longer keys"
      else:
        reason = takes_call(name, q_len=q_len, k_len=k_len, packed=packed, causal=causal,
                            block=self.block)
      if reason:
        passed.append(f"{name}: {reason}")
      else:
        usable.append(name)
    measured = self.table.fastest(self.scheme, k_len, usable) if self.table else None
    if measured:
      name, at = measured
      why = f"the fastest measured at L={at} in {self.table.source}"
    else:
      name = next((n for n in _PREFERENCE.get(self.backend, ()) if n in usable), "blockwise")
      why = ("its fixed order (no kernel table for this device: python -m lcx.bench.kernels "
             "measures one)" if self.table is None else
             f"its fixed order ({self.table.source} has no row for {self.scheme})")
    if passed:
      why += f"; passed over {'; '.join(passed)}"
    _log_choice(self.backend, self.scheme, q_len, k_len, packed, cache, name, why)
    return name


@functools.lru_cache(maxsize=None)
def _log_choice(backend, scheme, q_len, k_len, packed, cache, name, why):
  # Cached: a length is traced many times (shapes, init, every jit), its choice logged once.
  logging.getLogger("lcx").info(
      "attention=auto on %s, %s, %d queries x %d keys%s%s: %s, %s", backend, scheme, q_len, k_len,
      ", packed" if packed else "", ", KV cache" if cache else "", name, why)


def choose(name: str, *, scheme: str, block: int = DEFAULT_BLOCK,
           backend: str | None = None) -> Choice:
  """model.attention=name for position scheme `scheme`, checked as `select` checks it; `auto`
  reads this device's kernel table here, so a bad one is refused when the model is built."""
  backend = backend or jax.default_backend()
  bias = positions.bias_kind(scheme)
  select(name, bias=bias, backend=backend)
  table = (kernel_choice.load(kernel_choice.device_name())
           if name == "auto" and backend == jax.default_backend() else None)
  return Choice(name, scheme if bias is not None else kernel_choice.NO_BIAS, bias, backend, block,
                table)


def _kernel(name: str, block: int):
  if name in TILED:
    return functools.partial(IMPLEMENTATIONS[name], block_q=block, block_k=block)
  if name == "splash":
    return functools.partial(splash_attention, block=block)
  return IMPLEMENTATIONS[name]


def make(choice: Choice, *, cache: bool = False):
  """The attention function of a Choice; `cache`: for a KV cache (decoding), queries aligned to
  the end of a longer key buffer whose unwritten slots are masked by segment id, which dense and
  the tiled kernels take (a named cuDNN or splash hands those calls to blockwise)."""
  if choice.requested != "auto":
    name = choice.requested
    if cache and name != "dense" and name not in TILED:
      name = "blockwise"
    return _kernel(name, choice.block)

  def attend(q_BQHK, k_BKHK, v_BKHK, *, q_segment_ids_BQ=None, causal=True, **kw):
    name = choice.kernel(q_BQHK.shape[1], k_BKHK.shape[1], packed=q_segment_ids_BQ is not None,
                         causal=causal, cache=cache)
    return _kernel(name, choice.block)(q_BQHK, k_BKHK, v_BKHK, q_segment_ids_BQ=q_segment_ids_BQ,
                                       causal=causal, **kw)

  return attend
