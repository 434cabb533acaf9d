"""One record per attention kernel: where it runs, which biases and calls it takes, and where its
code is (imported on first use, so that reading a config loads no kernel).

Adding a kernel is its module, its test and one record here; everything that asks what a kernel
can do (config checks, `auto`'s choice, the benchmarks) reads the records.
"""
import dataclasses
import functools
import importlib
from typing import Callable

import jax

from lcx.attention.tiles import DEFAULT_BLOCK
from lcx.positions.bias import LINEAR, BiasKind

BACKENDS = ("cpu", "gpu", "tpu")
LOCAL = ("window", "chunk")  # the kinds of local layer (model.window, model.chunk)


def _cudnn_call(q_len: int, k_len: int, packed: bool, causal: bool, block: int) -> str | None:
  del block
  if packed:
    return "it keeps packed documents apart only with a (batch, 1, L, L) mask"
  if causal and q_len != k_len:
    return "it needs as many queries as keys under a causal mask"
  return None


def _splash_call(q_len: int, k_len: int, packed: bool, causal: bool, block: int) -> str | None:
  del packed, causal
  from lcx.attention.library import splash_fits
  if not splash_fits(block, q_len, k_len):
    return f"it takes lengths that are multiples of its tile ({block})"
  return None


def _native_unavailable() -> str | None:
  from lcx.attention import native  # builds the C++ kernel on first use to find out
  return native.unavailable_reason()


@dataclasses.dataclass(frozen=True)
class Kernel:
  name: str  # model.attention's value
  code: str  # "module:function", imported when the kernel is first used
  backends: tuple[str, ...]
  # Which position biases it takes: "any" (it calls the scheme's function, per tile or once,
  # autodiff of it included), "linear" (the fixed linear closed form alone, ALiBi's, which it
  # computes itself), or "none".
  bias: str
  tiled: bool = False  # takes tile lengths (block_q, block_k); holds one tile of scores at once
  # takes queries aligned to the end of a longer key buffer (a KV cache)
  takes_cache: bool = False
  # takes `q_offset`, a traced index of the first query into the keys, and `keys_from`, a
  # function making the keys it meets from those given (context parallelism: a device's chunk of
  # queries against the keys of the whole sequence, gathered)
  takes_offset: bool = False
  quadratic: bool = False  # memory grows with the square of the length
  # The local layers it takes: "window" (model.window), "chunk" (model.chunk). By position
  # (any positions), or `local_by_index`: by token index, the same only where positions count
  # tokens (not under PoSE's skipped positions), so `auto` leaves it to be named.
  local: tuple[str, ...] = ()
  local_by_index: bool = False
  block_arg: str = ""  # "block" when it takes one tile length by that name (splash)
  # Why one call of these shapes is refused (None: taken): (q_len, k_len, packed, causal, block).
  call_limits: Callable | None = None
  unavailable: Callable | None = None  # why it cannot run in this process, asked on its backend
  # `auto`: the backends where it weighs the kernel against a measured table, those where its
  # fixed order (no table) takes it, and the kernel's rank in both orders (lower first).
  auto_on: tuple[str, ...] = ()
  preferred_on: tuple[str, ...] = ()
  rank: int = 0


KERNELS = {k.name: k for k in (
    Kernel("dense", "lcx.attention.library:dense_attention", BACKENDS, "any", takes_cache=True,
           takes_offset=True, quadratic=True, local=LOCAL, auto_on=BACKENDS, rank=3),
    Kernel("blockwise", "lcx.attention.blockwise:blockwise_attention", BACKENDS, "any", tiled=True,
           takes_cache=True, takes_offset=True, local=LOCAL, auto_on=BACKENDS,
           preferred_on=BACKENDS, rank=2),
    Kernel("native", "lcx.attention.native:native_attention", ("cpu",), "linear", tiled=True,
           takes_cache=True, local=LOCAL, unavailable=_native_unavailable, auto_on=("cpu",),
           preferred_on=("cpu",)),
    # local windows through jax.nn.dot_product_attention's local_window_size (splash: its
    # LocalMask); neither has a chunked form that follows positions across packed documents
    Kernel("cudnn", "lcx.attention.library:cudnn_attention", ("gpu",), "none",
           local=("window",), local_by_index=True, call_limits=_cudnn_call, auto_on=("gpu",),
           preferred_on=("gpu",)),
    Kernel("splash", "lcx.attention.library:splash_attention", ("tpu",), "none",
           local=("window",), local_by_index=True, block_arg="block", call_limits=_splash_call,
           auto_on=("tpu",), preferred_on=("tpu",)),
    # on a CPU it runs in the Pallas interpreter: for checking it, far too slow to train with
    Kernel("pallas", "lcx.attention.pallas:pallas_attention", BACKENDS, "any", tiled=True,
           takes_cache=True, local=LOCAL, auto_on=("gpu", "tpu"), rank=1),
)}
CHOICES = (*KERNELS, "auto")
TILED = tuple(k.name for k in KERNELS.values() if k.tiled)
QUADRATIC = tuple(k.name for k in KERNELS.values() if k.quadratic)
OFFSET_TAKERS = tuple(k.name for k in KERNELS.values() if k.takes_offset)
FALLBACK = "blockwise"  # runs everywhere and takes every bias
REFERENCE = "dense"  # the full score matrix: what every other kernel is checked and timed against


def auto_candidates(backend: str) -> tuple[str, ...]:
  """The kernels `auto` weighs on a backend where a kernel table measured them, best first."""
  ranked = sorted((k for k in KERNELS.values() if backend in k.auto_on), key=lambda k: k.rank)
  return tuple(k.name for k in ranked) or (FALLBACK,)


def preference(backend: str) -> tuple[str, ...]:
  """`auto`'s order where nothing was measured (benchmarks/README.md has the CPU figures)."""
  ranked = sorted((k for k in KERNELS.values() if backend in k.preferred_on), key=lambda k: k.rank)
  return tuple(k.name for k in ranked) or (FALLBACK,)


def accepts(name: str, bias: BiasKind | None) -> str | None:
  """None if kernel `name` takes a scheme's bias of this kind (None: no bias), values and
  parameter gradients; otherwise why not."""
  kind = KERNELS[name].bias
  if bias is None or kind == "any":
    return None
  if kind == "linear":
    if bias.closed_form != LINEAR:
      return "it computes no bias but the fixed linear form (ALiBi's)"
    if bias.learned:
      return "it returns no gradient for the bias's parameters"
    return None
  return "it takes no position bias"


def cannot_run(name: str, backend: str) -> str | None:
  """Why `name` cannot run in this process (the native kernel needs a working C++ compiler)."""
  kernel = KERNELS[name]
  if kernel.unavailable is not None and backend == jax.default_backend():
    return kernel.unavailable()
  return None


def takes_call(name: str, *, q_len: int, k_len: int, packed: bool, causal: bool = True,
               block: int = DEFAULT_BLOCK) -> str | None:
  """Why kernel `name` cannot take one call of these shapes (None: it can); what `auto` checks
  per call, beyond the scheme (accepts) and the backend."""
  limits = KERNELS[name].call_limits
  return limits(q_len, k_len, packed, causal, block) if limits else None


def takes_local(name: str, kind: str, *, named: bool = True) -> str | None:
  """None if kernel `name` takes local layers of `kind` ("window", "chunk"; "": none), named
  as model.attention (`named`) or chosen by auto; otherwise why not."""
  kernel = KERNELS[name]
  if not kind:
    return None
  if kind not in kernel.local:
    takers = ", ".join(k.name for k in KERNELS.values() if kind in k.local)
    return f"it takes no local {kind} ({takers} do)"
  if kernel.local_by_index and not named:
    return (f"it masks the {kind} by token index, not position (the two differ under PoSE's "
            "skipped positions); auto leaves it to be named")
  return None


def masks_local_by_index(name: str) -> bool:
  """Whether model.attention=name masks local layers by token index (not by position)."""
  return name in KERNELS and KERNELS[name].local_by_index


def check(name: str, *, bias: BiasKind | None, backend: str | None = None,
          local: str = "") -> None:
  """What can be told of model.attention=name from the config alone (config resolution): a known
  name, one that runs on this backend and takes the scheme's bias. Nothing is compiled or loaded;
  whether a kernel can run in this process is `select`'s, when the model is built."""
  backend = backend or jax.default_backend()
  if name not in CHOICES:
    raise ValueError(f"model.attention={name!r} is unknown; allowed: {', '.join(CHOICES)}")
  if name == "auto":
    return
  backends = KERNELS[name].backends
  if backend not in backends:
    raise ValueError(f"model.attention={name!r} runs on {'/'.join(backends)}, not on "
                     f"{backend}; use auto, dense or blockwise")
  if reason := accepts(name, bias):
    raise ValueError(f"model.attention={name!r} cannot take this position scheme's bias: "
                     f"{reason}; use blockwise (or dense, or auto)")
  if reason := takes_local(name, local):
    raise ValueError(f"model.attention={name!r} cannot run this model's local layers: {reason}; "
                     "use blockwise (or dense, or auto)")


def function(name: str):
  """Kernel `name`'s attention function, its code imported on first use."""
  module, _, attribute = KERNELS[name].code.partition(":")
  return getattr(importlib.import_module(module), attribute)


def with_block(name: str, block: int):
  """Kernel `name`'s function with its tile length set."""
  kernel = KERNELS[name]
  if kernel.tiled:
    return functools.partial(function(name), block_q=block, block_k=block)
  if kernel.block_arg:
    return functools.partial(function(name), **{kernel.block_arg: block})
  return function(name)
