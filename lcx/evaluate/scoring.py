"""Per-token losses of a model on batches of windows, sized to fit the device's memory."""
import math
import os

import jax
import numpy as np
from flax import nnx

from lcx import attention
from lcx.model import transformer
from lcx.sharding import (CONTEXT, activation_sharding, from_context_order, named_sharding,
                          to_context_order)


class DoesNotFit(ValueError):
  """An evaluation length whose activations would not fit in memory."""


def available_memory_bytes(device: jax.Device) -> int:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class Scorer:
  """For windows (N, L + 1): losses (N, L) of token t + 1 given tokens 0..t, and the argmax
  predictions (N, L) of each next token. On a mesh with a context axis each window is sharded
  over it (context parallelism): padded at its end to a multiple of 2 x context tokens (a causal
  model's earlier tokens never see them) and put in the load-balanced order the model takes."""

  def __init__(self, model: nnx.Module, mesh, rules, *, max_batch_tokens: int = 32768,
               memory_fraction: float = 0.5):
    self.graphdef, self.params = nnx.split(model)
    self.cfg = model.cfg
    self.attention = model.attention_choice
    self.mesh, self.rules = mesh, rules
    self.shards = mesh.shape["data"] * mesh.shape["fsdp"]
    self.context = int(mesh.shape.get(CONTEXT, 1))
    self.max_batch_tokens = max_batch_tokens
    self.budget = memory_fraction * available_memory_bytes(mesh.devices.flat[0]) * mesh.devices.size
    self.sharding = named_sharding(mesh, ("batch", "length"), rules)
    self._fn = jax.jit(self._losses)

  def _losses(self, params, tokens, positions, targets):
    with activation_sharding(self.mesh, self.rules):
      model = nnx.merge(self.graphdef, params)
      return model.losses(tokens, positions, targets, predictions=True)

  def sharding_for(self, array: np.ndarray):
    """Rows over the batch shards, every other axis whole (prompts for decoding)."""
    return named_sharding(self.mesh, ("batch",) + (None,) * (array.ndim - 1), self.rules)

  def bytes_per_row(self, length: int) -> int:
    """Peak activation bytes of one window: attention's float32 scores and probabilities per head
    (all length x length of them for dense, one tile per query tile for the tiled kernels), plus
    logits and a few residual-stream copies."""
    c = self.cfg
    tiled = self.attention.kernel(length) in attention.TILED
    side = min(c.attention_block, length) if tiled else length
    attention_bytes = 3 * c.n_heads * side * length * 4
    logits = 2 * (length if c.segment_len else min(length, transformer.LOGITS_SLICE)) * c.vocab_size * 4
    stream = 8 * length * max(c.d_model, c.mlp_dim) * 4
    return attention_bytes + logits + stream

  def batch_rows(self, length: int) -> int:
    """Rows per batch: a multiple of the batch shards, within the token and memory budgets."""
    per_row = self.bytes_per_row(length) // self.context  # a row's share on each of its devices
    if per_row * self.shards > self.budget:
      raise DoesNotFit(
          f"length {length} needs about {per_row * self.shards / 2**30:.1f} GiB of activations "
          f"for {self.shards} window(s) with model.attention={self.cfg.attention}, more than the "
          f"{self.budget / 2**30:.1f} GiB available; evaluate shorter lengths")
    by_memory = int(self.budget // per_row)
    by_tokens = max(1, self.max_batch_tokens // length)
    return max(self.shards, min(by_memory, by_tokens) // self.shards * self.shards)

  def losses(self, windows: np.ndarray) -> np.ndarray:
    return self.run(windows)[0]

  def predictions(self, windows: np.ndarray) -> np.ndarray:
    return self.run(windows)[1]

  def run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, length = windows.shape[0], windows.shape[1] - 1
    # Fewer windows than a full batch run as the next power of two (times the batch shards):
    # little padding, and still few distinct shapes to compile.
    per_shard = 2 ** math.ceil(math.log2(-(-n // self.shards)))
    rows = min(self.batch_rows(length), self.shards * per_shard)
    padded = -(-length // (2 * self.context)) * 2 * self.context
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
    ordered = lambda x: to_context_order(np.pad(x, ((0, 0), (0, padded - length))), self.context)
    natural = lambda x: from_context_order(x, self.context)[:, :length]
    losses_out = np.empty((n, length), np.float32)
    argmax_out = np.empty((n, length), np.int32)
    for start in range(0, n, rows):
      chunk = windows[start:start + rows]
      pad = rows - len(chunk)
      if pad:  # fixed batch shapes: one compilation per length
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      put = lambda x: jax.device_put(np.ascontiguousarray(ordered(x), np.int32), self.sharding)
      try:
        losses, argmax = map(natural, jax.device_get(
            self._fn(self.params, put(chunk[:, :-1]), put(positions),
                     put(chunk[:, 1:]))))
        losses_out[start:start + rows - pad] = losses[: rows - pad]
        argmax_out[start:start + rows - pad] = argmax[: rows - pad]
      except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
          raise DoesNotFit(f"length {length} ran out of device memory at {rows} window(s) a "
                           f"batch; evaluate shorter lengths") from None
        raise
    return losses_out, argmax_out
