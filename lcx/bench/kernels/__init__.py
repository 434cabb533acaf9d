"""Timing the kernels `model.attention=auto` chooses from (lcx.attention.choice).

One attention layer, forward and backward (the gradients of q, k, v and of the scheme's bias
parameters), at the model's heads, head size and compute dtype, per scheme (`none` stands for
every scheme without a bias), length and kernel that can run it on this device. The kernels of
one scheme and length are compiled first, then timed round-robin; each keeps its fastest round.
Rows are unpacked (no segment ids): cuDNN, the one kernel whose time packing changes (a mask), is
not chosen for packed rows. The command line is `python -m lcx.bench.kernels` (__main__.py).
"""
import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lcx import attention as attention_lib
from lcx import bench, positions
from lcx.attention import choice as kernel_choice
from lcx.model import ModelConfig


def biased_schemes() -> tuple[str, ...]:
  """none, and every registered scheme with a bias (the others attend as none does)."""
  return ("none", *(s for s in positions.available() if positions.bias_kind(s) is not None))


def _layer(model: ModelConfig, scheme: str, kernel: str, batch: int, length: int):
  """A jitted forward + backward of one attention layer through `kernel`, and its arguments."""
  cfg = dataclasses.replace(model, position=scheme, max_len=length)
  graphdef, params, rest = nnx.split(positions.make(scheme, cfg.position_config(),
                                                    rngs=nnx.Rngs(0)), nnx.Param, ...)
  attend = attention_lib.make(attention_lib.choose(kernel, scheme=scheme,
                                                   block=model.attention_block))
  dtype = jnp.dtype(model.compute_dtype)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, (batch, length, model.n_heads, model.head_dim), dtype)
             for key in keys)
  pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
  # a bias made from the data (FoX's) is made from a layer input, its gates' gradient included
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, length, model.d_model), dtype)

  def loss(q, k, v, params):
    scheme = nnx.merge(graphdef, params, rest)
    gates = scheme.log_gates(x, 0)
    rows = {} if gates is None else dict(row_bias=positions.gate_row_bias(gates, None, length))
    o = attend(q, k, v, q_positions_BQ=pos, k_positions_BK=pos, bias_fn=scheme.bias_fn(0), **rows)
    return o.astype(jnp.float32).sum()

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))), (q, k, v, params)


def measure(model: ModelConfig, schemes, lengths, tokens: int, repeats: int, memory_limit: int,
            progress=None) -> tuple[dict, dict]:
  """seconds[scheme][length][kernel] (forward + backward, fastest round) and what was left out
  (skipped[scheme][length][kernel] = the bytes it would need)."""
  backend = jax.default_backend()
  seconds, skipped = {}, {}
  for scheme in schemes:
    bias = positions.bias_kind(scheme)
    kernels = [k for k in attention_lib.auto_candidates(backend)
               if attention_lib.accepts(k, bias) is None
               and attention_lib.cannot_run(k, backend) is None]
    key = scheme if bias is not None else kernel_choice.NO_BIAS
    for length in lengths:
      batch = max(1, tokens // length)
      compiled = {}
      for kernel in kernels:
        if attention_lib.takes_call(kernel, q_len=length, k_len=length, packed=False,
                                    block=model.attention_block):
          continue
        if progress:
          progress.set_postfix_str(f"compile {scheme} L={length} {kernel}")
        fn, args = _layer(model, scheme, kernel, batch, length)
        executable = fn.lower(*args).compile()
        need = bench.compiled_memory(executable)
        if need > memory_limit:
          skipped.setdefault(key, {}).setdefault(length, {})[kernel] = need
          continue
        jax.block_until_ready(executable(*args))  # the first call pays one-time allocation
        compiled[kernel] = (executable, args)
      rounds = []
      for _ in range(repeats):
        rounds.append({kernel: _seconds(*c) for kernel, c in compiled.items()})
      seconds.setdefault(key, {})[length] = {k: min(r[k] for r in rounds) for k in compiled}
      if progress:
        progress.update(1)
  return seconds, skipped


def _seconds(executable, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(executable(*args))
  return time.perf_counter() - start


def table_markdown(table: kernel_choice.Table) -> str:
  """Per scheme and length: each kernel's time, and what auto runs there."""
  kernels = sorted({k for rows in table.seconds.values() for r in rows.values() for k in r})
  lines = ["| scheme | L | " + " | ".join(f"{k} ms" for k in kernels) + " | auto runs |",
           "| --- | ---: |" + " ---: |" * len(kernels) + " --- |"]
  for scheme, rows in table.seconds.items():
    for length, times in sorted(rows.items()):
      fastest = table.fastest(scheme, length, times)[0]
      cells = [f"{1e3 * times[k]:.1f}" if k in times else "-" for k in kernels]
      lines.append(f"| {scheme} | {length} | " + " | ".join(cells) + f" | {fastest} |")
  return "\n".join(lines)
