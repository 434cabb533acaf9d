"""The fused CPU attention kernel (attention.cc), reached through XLA's FFI.

It is compiled with the machine's C++ compiler (-march=native) on first use and cached by a hash of
the source, the compiler flags, jaxlib and the CPU, so a fresh clone needs no build step; where no
compiler works, `unavailable_reason()` says why and `auto` keeps the JAX blockwise kernel.

`native_attention` has the signature of lcx.attention.library.dense_attention. It takes no bias
but a fixed one of the linear closed form (ALiBi's, lcx.positions.LinearBias), which it computes per
tile from the positions and the slopes; it computes
in float32 whatever the model's compute dtype (on this CPU bfloat16 is no faster).
"""
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lcx import sharding
from lcx.attention.tiles import DEFAULT_BLOCK
from lcx.positions.bias import LINEAR

SOURCE = Path(__file__).with_name("attention.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
MAX_BLOCK = 512  # the kernel's per-tile key arrays (attention.cc: kMaxTile)
# Past this many keys a query tile's pass over one head's K and V (keys x head dim floats each)
# no longer stays in cache, and every query tile makes one: tiles of MAX_BLOCK make 4x fewer
# passes. Measured here on SmolLM2's shapes (9 query and 3 key/value heads of 64, one layer's
# forward): at 32K tokens 6.7 s against 8.3-9.3 s with tiles of 128; at 8K and 16K the two
# are within noise.
LONG_KEYS = 16384


def _cpu_identity() -> str:
  """What -march=native depends on: the CPU's model and flags."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return "\n".join(sorted({l for l in lines if l.startswith(("model name", "flags"))}))
  except OSError:
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
  root = os.environ.get("LCX_NATIVE_CACHE") or Path.home() / ".cache" / "lcx" / "native"
  return Path(root)


def library_path() -> Path:
  key = hashlib.sha256("\0".join((SOURCE.read_text(), " ".join(_FLAGS), jax.__version__,
                                  _cpu_identity())).encode()).hexdigest()[:16]
  return _cache_dir() / f"lcx_attention_{key}.so"


def build() -> Path:
  """The compiled kernel, built if this source/CPU has none yet. Concurrent builders (test
  processes) each write a private file and rename it into place, so none reads a partial one."""
  target = library_path()
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  compiler = os.environ.get("CXX", "g++")
  fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
  os.close(fd)
  command = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", partial]
  try:
    result = subprocess.run(command, capture_output=True, text=True)
  except OSError as error:
    os.unlink(partial)
    raise RuntimeError(f"cannot run the C++ compiler {compiler!r} ({error}); set CXX") from None
  if result.returncode != 0:
    os.unlink(partial)
    raise RuntimeError(f"building {SOURCE.name} failed:\n{result.stderr[-2000:]}")
  os.replace(partial, target)
  return target


@functools.cache
def _registered() -> str | None:
  """Builds, loads and registers the kernel once per process; the reason it cannot, or None."""
  if jax.default_backend() != "cpu":
    return f"the native kernel runs on CPU, not on {jax.default_backend()}"
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
  except (RuntimeError, OSError) as error:
    return str(error)
  for name, symbol in (("lcx_attention_fwd", library.LcxAttentionForward),
                       ("lcx_attention_bwd", library.LcxAttentionBackward)):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
  return None


def unavailable_reason() -> str | None:
  """None where the native kernel runs here; otherwise why not."""
  return _registered()


def native_attention(q_BQHK, k_BKHK, v_BKHK, *, q_positions_BQ, k_positions_BK,
                     q_segment_ids_BQ=None, k_segment_ids_BK=None, bias_fn=None, causal=True,
                     window: int = 0, chunk: int = 0,
                     block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK):
  """Same signature and result as lcx.attention.library.dense_attention (see there). A local
  layer (window, chunk) visits only the key tiles within its span, as blockwise does."""
  kind = getattr(bias_fn, "kind", None)
  if bias_fn is not None and (kind is None or kind.closed_form != LINEAR or kind.learned):
    # Its backward returns no slope gradient, so a learned linear bias is refused too.
    raise ValueError("native attention computes no position bias but a fixed linear one "
                     "(ALiBi's); use blockwise")
  if not (1 <= block_q and 1 <= block_k <= MAX_BLOCK):
    raise ValueError(f"native attention takes tiles of 1..{MAX_BLOCK} tokens; got block_q="
                     f"{block_q}, block_k={block_k} (model.attention_block)")
  if (window or chunk) and not causal:
    raise ValueError("a local attention window or chunk needs causal attention")
  if reason := unavailable_reason():
    raise RuntimeError(f"model.attention='native' cannot run: {reason}")
  B, Q, H, _ = q_BQHK.shape
  S, G = k_BKHK.shape[1], k_BKHK.shape[2]
  if S > LONG_KEYS:
    block_q = block_k = MAX_BLOCK
  segments = q_segment_ids_BQ is not None
  if not segments:
    q_segment_ids_BQ, k_segment_ids_BK = jnp.zeros((B, Q), jnp.int32), jnp.zeros((B, S), jnp.int32)
  slopes_H = bias_fn.slopes_H if bias_fn is not None else jnp.zeros((H,), jnp.float32)
  config = dict(block_q=block_q, block_k=block_k, causal=int(causal), offset=S - Q,
                segments=int(segments), bias=int(bias_fn is not None), window=int(window),
                chunk=int(chunk))
  as_i32 = lambda x: x.astype(jnp.int32)
  operands = (q_BQHK.astype(jnp.float32), k_BKHK.astype(jnp.float32),
              v_BKHK.astype(jnp.float32), as_i32(q_positions_BQ), as_i32(k_positions_BK),
              as_i32(q_segment_ids_BQ), as_i32(k_segment_ids_BK),
              slopes_H.astype(jnp.float32))
  run = functools.partial(_attention, tuple(sorted(config.items())))
  mesh_specs = _shard_specs(grouped=G < H)
  if mesh_specs is not None:  # one kernel call per shard: rows and heads are independent
    mesh, rows_heads, rows_kv_heads, rows, heads = mesh_specs
    run = jax.shard_map(run, mesh=mesh,
                        in_specs=(rows_heads, rows_kv_heads, rows_kv_heads, *(rows,) * 4, heads),
                        out_specs=rows_heads, check_vma=False)
  return run(*operands).astype(q_BQHK.dtype)


def _shard_specs(grouped: bool):
  """(mesh, spec of (B, L, H, K), of (B, L, G, K), of (B, L), of (H,)) under lcx.sharding's
  active mesh, or None. XLA cannot partition a custom call, so without this it would gather
  every shard to run it."""
  active = sharding.active()
  if active is None:
    return None
  mesh, rules = active
  batch, heads = sharding.logical_to_spec(("batch", "heads"), rules)
  kv_heads = heads  # multi-head: keys and values split as the queries
  if grouped:  # their own logical axis (an array of its own: the mesh axis is free again)
    _, kv_heads = sharding.logical_to_spec(("batch", "kv_heads"), rules)
  if heads != kv_heads:  # a shard's query heads must be those of its own groups
    raise ValueError(f"native attention with grouped-query attention needs the key/value heads "
                     f"sharded as the query heads (config.mesh.rules: heads -> {heads}, kv_heads "
                     f"-> {kv_heads}); use blockwise")
  return mesh, P(batch, None, heads, None), P(batch, None, kv_heads, None), P(batch, None), P(heads)


def _call(target, results, operands, config):
  return jax.ffi.ffi_call(target, results, vmap_method="sequential")(
      *operands, **{k: np.int64(v) for k, v in config})


def _forward(config, q, k, v, *rest):
  B, Q, H, _ = q.shape
  return _call("lcx_attention_fwd", (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                     jax.ShapeDtypeStruct((B, H, Q), jnp.float32)),
               (q, k, v, *rest), config)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(config, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes):
  return _forward(config, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes)[0]


def _attention_fwd(config, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes):
  o, lse = _forward(config, q, k, v, q_pos, k_pos, q_seg, k_seg, slopes)
  return o, (q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, slopes)


def _attention_bwd(config, residuals, do):
  q, k, v, o, lse, q_pos, k_pos, q_seg, k_seg, slopes = residuals
  # dK and dV come per query head (B, S, H, K); a group's share one key/value head
  per_query_head = (*k.shape[:2], q.shape[2], k.shape[3])
  shapes = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in (q.shape, per_query_head,
                                                                per_query_head))
  dq, dk, dv = _call("lcx_attention_bwd", shapes,
                     (q, k, v, o, lse, do.astype(jnp.float32), q_pos, k_pos, q_seg, k_seg,
                      slopes), config)
  G = k.shape[2]
  if G < q.shape[2]:
    dk, dv = (d.reshape(*d.shape[:2], G, -1, d.shape[3]).sum(3) for d in (dk, dv))
  no_grad = lambda x: np.zeros(x.shape, jax.dtypes.float0)
  return (dq, dk, dv, no_grad(q_pos), no_grad(k_pos), no_grad(q_seg), no_grad(k_seg),
          jnp.zeros_like(slopes))


_attention.defvjp(_attention_fwd, _attention_bwd)
