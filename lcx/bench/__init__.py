"""What each position scheme costs: train-step speed and memory, and long-context evaluation.

  python -m lcx.bench [--lengths 1024,2048,4096] [--eval_lengths 8192,16384,32768] [--out FILE]

Everything is measured in one process on the first local device: the matmul peak of that device,
then one jitted train step (AdamW included) per scheme, length and attention implementation, and a
forward pass of a small model at long lengths. Memory is what XLA's buffer assignment needs for the
compiled step (arguments + outputs + temporaries - donated), the same on every backend and
independent of what ran before in the process.
"""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcx import attention as attention_lib
from lcx.metrics import flops_per_token, measure_peak_flops
from lcx.model import ModelConfig, Transformer, count_params, token_losses
from lcx.sharding import make_mesh
from lcx.train_step import OptimizerConfig, TrainProgram

SCHEMES = ("none", "learned", "sinusoidal", "rope", "alibi")
# The train-step model of the MFU target: d 512, 4 layers, 8 heads, GELU MLP 2048, bytes.
TRAIN_MODEL = dict(vocab_size=256, d_model=512, n_layers=4, n_heads=8, head_dim=64, mlp_dim=2048,
                   mlp="gelu")
# The evaluation model: the `tiny` preset's shape.
EVAL_MODEL = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, head_dim=16, mlp_dim=256)
RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("vocab", "tensor"), ("heads", "tensor"),
         ("mlp", "tensor"))


@dataclasses.dataclass
class Timing:
  seconds: float  # the fastest of the timed repetitions
  memory_bytes: int  # XLA's buffer assignment of the compiled function
  compile_seconds: float


def compiled_memory(compiled) -> int:
  """Bytes a compiled executable needs: its arguments, outputs and temporaries, less what the
  outputs reuse from donated arguments."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _time(fn, args, repeats: int, *, donated_state: bool) -> tuple[float, object]:
  """Fastest wall time of fn(*args) over repeats; a donated first argument is threaded through."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - start)
    if donated_state:
      args = (out[0], *args[1:])
  return best, args


def time_train_step(model: ModelConfig, batch_size: int, seq_len: int, mesh,
                    repeats: int = 3) -> Timing:
  """One AdamW train step on random tokens (packed as one document per row)."""
  program = TrainProgram(model, OptimizerConfig(learning_rate=1e-3, warmup_steps=10, steps=1000),
                         mesh, RULES)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, model.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
  batch = program.global_batch({
      "tokens": tokens[:, :-1], "targets": tokens[:, 1:],
      "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy(),
      "segment_ids": np.zeros((batch_size, seq_len), np.int32)})
  state = program.init()
  start = time.perf_counter()
  compiled = program.step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  state, _ = compiled(state, batch)  # the first run also pays one-time allocation
  seconds, _ = _time(compiled, (state, batch), repeats, donated_state=True)
  return Timing(seconds, compiled_memory(compiled), compile_seconds)


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
  seconds, _ = _time(compiled, (params, tokens), repeats, donated_state=False)
  return Timing(seconds, memory, compile_seconds)


def train_flops_per_token(model: ModelConfig, seq_len: int) -> float:
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(model, rngs=nnx.Rngs(0))),
                                 nnx.Param)
  del graphdef
  params = count_params(abstract)
  return flops_per_token(params["non_embedding"], model.n_layers, model.n_heads * model.head_dim,
                         seq_len)


def single_device_mesh():
  return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.local_devices()[:1])


def implementations_for(scheme: str, requested: tuple[str, ...]) -> tuple[str, ...]:
  """The requested implementations that can run this scheme on this backend."""
  from lcx import positions
  usable = []
  for name in requested:
    try:
      attention_lib.select(name, has_bias=positions.has_bias(scheme))
    except ValueError:
      continue
    usable.append(name)
  return tuple(usable)
