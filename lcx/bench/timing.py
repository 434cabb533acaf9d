"""Timing: compiled train steps round-robin against each other, forward passes at long lengths,
and one layer's attention kernel alone, with what XLA's buffer assignment says they need."""
import dataclasses
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcx import attention as attention_lib
from lcx import positions
from lcx.attention.kernels import QUADRATIC
from lcx.attention.tiles import DEFAULT_BLOCK, visible_tiles
from lcx.bench.models import EVAL_MODEL, RULES, SCHEMES, TRAIN_MODEL, VARIANTS, local_kind
from lcx.metrics import flops_per_token, measure_peak_flops
from lcx.model import ModelConfig, Transformer, count_params, token_losses
from lcx.optimizer import OptimizerConfig
from lcx.train.step import TrainProgram


@dataclasses.dataclass
class Timing:
  seconds: float  # the fastest of the timed repetitions
  memory_bytes: int  # XLA's buffer assignment of the compiled function
  compile_seconds: float
  round_seconds: tuple[float, ...] = ()  # every timed repetition, in order (one per round)


def compiled_memory(compiled) -> int:
  """Bytes a compiled executable needs: its arguments, outputs and temporaries, less what the
  outputs reuse from donated arguments."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _time_once(fn, args) -> tuple[float, object]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


class PreparedStep:
  """A compiled AdamW train step with its state and a batch of random tokens (one document per
  row), ready to be timed."""

  def __init__(self, model: ModelConfig, batch_size: int, seq_len: int, mesh):
    program = TrainProgram(model, OptimizerConfig(learning_rate=1e-3, warmup_steps=10,
                                                  steps=1000), mesh, RULES)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len))
    self.batch = program.global_batch({
        "tokens": tokens[:, :-1], "targets": tokens[:, 1:], "positions": positions.copy(),
        "segment_ids": np.zeros((batch_size, seq_len), np.int32),
        "weights": np.ones((batch_size, seq_len), np.float32)})
    self.state = program.init()
    start = time.perf_counter()
    self.compiled = program.step.lower(self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - start
    self.memory_bytes = compiled_memory(self.compiled)
    self.times = []
    self.run(record=False)  # the first run also pays one-time allocation

  def run(self, record: bool = True) -> None:
    seconds, (self.state, _) = _time_once(self.compiled, (self.state, self.batch))
    if record:
      self.times.append(seconds)

  def timing(self) -> Timing:
    return Timing(min(self.times), self.memory_bytes, self.compile_seconds, tuple(self.times))


class PeakMeter:
  """The device's matmul peak in the models' compute dtype, sampled whenever asked; the best
  sample counts."""

  def __init__(self, mesh, dtype: str = "float32"):
    self.mesh, self.dtype = mesh, dtype
    self.best = measure_peak_flops(mesh, dtype)

  def sample(self) -> None:
    self.best = max(self.best, measure_peak_flops(self.mesh, self.dtype, iters=1))


def time_train_steps(steps: dict, repeats: int, peak: PeakMeter | None = None) -> dict[str, Timing]:
  """Times prepared steps round-robin, `repeats` rounds, and keeps each one's fastest: a slow
  spell of the machine then hits every scheme alike, so the ratios between them hold. The peak is
  sampled once per round, under the same conditions."""
  for _ in range(repeats):
    if peak is not None:
      peak.sample()
    for step in steps.values():
      step.run()
  return {name: step.timing() for name, step in steps.items()}


def paired_ratio(seconds, base_seconds) -> float:
  """The median over rounds of a step's time over the base step's time in the same round. A
  ratio of the two fastest times would move every scheme's ratio with one lucky sample of the
  base; pairing within a round also cancels a slow spell that spans the round."""
  return float(np.median(np.asarray(seconds) / np.asarray(base_seconds)))


def forward_fn(model_cfg: ModelConfig):
  """A jitted (params, tokens) -> per-token losses of a fresh model."""
  graphdef, params = nnx.split(Transformer(model_cfg, rngs=nnx.Rngs(0)), nnx.Param)

  @jax.jit
  def losses(params, tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1] - 1), (tokens.shape[0],
                                                                   tokens.shape[1] - 1))
    logits = nnx.merge(graphdef, params)(tokens[:, :-1], positions)
    return token_losses(logits, tokens[:, 1:]).mean()

  return losses, params


def time_forward(model: ModelConfig, length: int, repeats: int = 2,
                 memory_limit: int | None = None) -> Timing | int:
  """Forward loss of one row of `length` tokens; if XLA needs more than memory_limit bytes, the
  bytes it would need (not run)."""
  losses, params = forward_fn(model)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.vocab_size, (1, length + 1)),
                       jnp.int32)
  start = time.perf_counter()
  compiled = losses.lower(params, tokens).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled_memory(compiled)
  if memory_limit is not None and memory > memory_limit:
    return memory
  jax.block_until_ready(compiled(params, tokens))
  seconds = min(_time_once(compiled, (params, tokens))[0] for _ in range(repeats))
  return Timing(seconds, memory, compile_seconds)


def train_flops_per_token(model: ModelConfig, seq_len: int, causal: bool = False) -> float:
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(model, rngs=nnx.Rngs(0))),
                                 nnx.Param)
  del graphdef
  params = count_params(abstract)
  span, memory_keys = model.attention_context(seq_len, causal)
  return flops_per_token(params["non_embedding"], model.n_layers, model.n_heads * model.head_dim,
                         span, causal, memory_keys)


def kernel_of(model: ModelConfig, length: int, packed: bool) -> str:
  """The attention kernel a model runs at `length` (what `auto` chooses, or the one named);
  `packed`: with segment ids, as train batches have."""
  return attention_lib.choose(model.attention, scheme=model.position, block=model.attention_block,
                              local=model.local_layer(0)).kernel(length, packed=packed)


def implementations_for(scheme: str, requested: tuple[str, ...]) -> tuple[str, ...]:
  """The requested implementations that can run this scheme on this backend."""
  usable = []
  for name in requested:
    try:
      attention_lib.select(name, bias=positions.bias_kind(VARIANTS[scheme]["position"]),
                           local=local_kind(scheme))
    except ValueError:
      continue
    usable.append(name)
  return tuple(usable)


def run_train_benchmarks(mesh, peak: PeakMeter, schemes, lengths, implementations,
                         tokens_per_step: int, repeats: int, progress,
                         dense_schemes=SCHEMES, model_fields=TRAIN_MODEL) -> list[dict]:
  """One row per (scheme, length, implementation): speed, MFU (PaLM's FLOP count, and the causal
  half of attention the kernels compute) and memory, and both relative to
  `none` with the same implementation and length (dense runs only `dense_schemes`: it is the
  slow reference). The schemes of one length and implementation
  are timed round-robin (time_train_steps) and compared round by round (paired_ratio); MFU is over
  the best peak of the whole run."""
  rows = []
  for length in lengths:
    batch = max(1, tokens_per_step // length)
    for implementation in implementations:
      steps, models = {}, {}
      for scheme in schemes:
        if (implementation not in implementations_for(scheme, (implementation,))
            or (implementation in QUADRATIC and scheme not in dense_schemes)):
          continue
        models[scheme] = ModelConfig(**model_fields, **VARIANTS[scheme], max_len=length,
                                     attention=implementation)
        progress.set_postfix_str(f"compile {scheme} L={length} {implementation}")
        steps[scheme] = PreparedStep(models[scheme], batch, length, mesh)
      progress.set_postfix_str(f"time L={length} {implementation}")
      for scheme, t in time_train_steps(steps, repeats, peak).items():
        tokens = batch * length
        rows.append({"scheme": scheme, "length": length, "batch": batch,
                     "implementation": implementation,
                     "kernel": kernel_of(models[scheme], length, packed=True),
                     "step_seconds": t.seconds, "tokens_per_second": tokens / t.seconds,
                     "model_flops": train_flops_per_token(models[scheme], length) * tokens,
                     "causal_model_flops": train_flops_per_token(models[scheme], length,
                                                                 causal=True) * tokens,
                     "memory_bytes": t.memory_bytes, "compile_seconds": t.compile_seconds,
                     "round_seconds": list(t.round_seconds)})
        # Each row as it is timed, so a run stopped by a time limit still leaves its figures.
        progress.write(f"row {scheme} L={length} {implementation} ({rows[-1]['kernel']}): "
                       f"{t.seconds * 1e3:.1f} ms/step, {tokens / t.seconds:,.0f} tokens/s, "
                       f"{t.memory_bytes / 2 ** 30:.2f} GiB, compile {t.compile_seconds:.0f} s")
        progress.update(1)
  for row in rows:
    row["mfu"] = row["model_flops"] / row["step_seconds"] / peak.best
    row["mfu_causal"] = row["causal_model_flops"] / row["step_seconds"] / peak.best
    base = next((r for r in rows if r["scheme"] == "none" and r["length"] == row["length"]
                 and r["implementation"] == row["implementation"]), None)
    if base is None:
      row["time_vs_none"] = row["memory_vs_none"] = None
      continue
    row["time_vs_none"] = paired_ratio(row["round_seconds"], base["round_seconds"])
    row["memory_vs_none"] = row["memory_bytes"] / base["memory_bytes"]
  return rows


def run_eval_benchmarks(lengths, implementations, memory_limit: int, repeats: int,
                        progress, model_fields=EVAL_MODEL, schemes=("alibi",)) -> list[dict]:
  """Forward loss of the evaluation model on one row of each length, per scheme and
  implementation that takes it; a run that would need more than memory_limit bytes is reported
  with its need and not run."""
  rows = []
  for length, scheme in itertools.product(lengths, schemes):
    for implementation in implementations_for(scheme, implementations):
      model = ModelConfig(**model_fields, **VARIANTS[scheme], max_len=length,
                          attention=implementation)
      progress.set_postfix_str(f"eval {scheme} L={length} {implementation}")
      result = time_forward(model, length, repeats, memory_limit)
      row = {"scheme": scheme, "length": length, "implementation": implementation,
             "kernel": kernel_of(model, length, packed=False)}
      if isinstance(result, Timing):
        row.update(seconds=result.seconds, memory_bytes=result.memory_bytes,
                   tokens_per_second=length / result.seconds)
      else:
        row.update(seconds=None, memory_bytes=result, tokens_per_second=None)
      rows.append(row)
      progress.update(1)
  return rows


def _best_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  return min(_time_once(fn, args)[0] for _ in range(repeats))


def attention_profile(model: ModelConfig, batch: int, length: int, repeats: int,
                      implementation: str = "blockwise", block: int = DEFAULT_BLOCK) -> dict:
  """Where one layer's attention time goes: a tiled kernel (blockwise or native; forward, and
  forward + backward) on the train model's shapes, no bias, with the matmul FLOPs it does (the
  visible tiles only: 2 products forward, 5 backward, one of them recomputing the scores), and
  the speed of one XLA tile product (all heads of the batch, block x head_dim x block) alone.
  Forward + backward is timed with and without ALiBi's bias in alternation, so the kernel's own
  cost of the bias shows free of the train step's noise."""
  H, K = model.n_heads, model.head_dim
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, (batch, length, H, K), jnp.float32) for key in keys)
  pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
  kernel = attention_lib.function(implementation)
  attend = lambda q, k, v, bias_fn=None: kernel(q, k, v, q_positions_BQ=pos, k_positions_BK=pos,
                                                bias_fn=bias_fn, block_q=block, block_k=block)
  forward = jax.jit(attend)
  alibi = positions.LinearBias(positions.alibi_slopes(H))
  forward_backward = {
      bias: jax.jit(jax.grad(lambda *a, b=fn: attend(*a, bias_fn=b).sum(), argnums=(0, 1, 2)))
      for bias, fn in (("none", None), ("alibi", alibi))}
  for fn in forward_backward.values():
    jax.block_until_ready(fn(q, k, v))
  rounds = [{bias: _time_once(fn, (q, k, v))[0] for bias, fn in forward_backward.items()}
            for _ in range(repeats)]
  block = min(block, length)
  n = -(-length // block)
  n_tiles = len(visible_tiles(n, n, block, block, offset=0))  # causal
  tile_flops = 2 * batch * H * block * block * K
  a = jax.random.normal(keys[0], (batch * H, block, K), jnp.float32)
  b = jax.random.normal(keys[1], (batch * H, K, block), jnp.float32)
  tile_product = jax.jit(lambda a, b: jnp.einsum("nqd,ndk->nqk", a, b))
  return {"implementation": implementation, "batch": batch, "length": length, "heads": H,
          "head_dim": K, "block": block, "tiles": n_tiles,
          "forward_seconds": _best_seconds(forward, (q, k, v), repeats),
          "forward_backward_seconds": min(r["none"] for r in rounds),
          "forward_backward_alibi_seconds": min(r["alibi"] for r in rounds),
          "alibi_vs_none": paired_ratio([r["alibi"] for r in rounds], [r["none"] for r in rounds]),
          "forward_backward_matmul_flops": 7 * n_tiles * tile_flops,
          "tile_matmul_flops_per_second": tile_flops / _best_seconds(tile_product, (a, b),
                                                                     4 * repeats)}
