"""The packed training stream: documents -> tokens -> fixed-length sequences.

Documents are tokenized once into a cache on disk (lcx.data.token_cache) and read back by slicing.
Each document becomes [EOS] + tokens; an epoch concatenates the documents in a seeded order and
cuts the result into chunks of seq_len + 1 tokens (inputs and shifted targets), visited in a
seeded order. Example g = step * global_batch + row is a pure function of (seed, g), so:
  - a run resumes from a step alone, with exactly the data an uninterrupted run would see;
  - each process builds only its own rows, and the global batch is the same whatever the number
    of processes.
Positions count from the start of the sequence, restarting at 0 at each document's EOS when
document_mask is on (with segment ids that keep packed documents from attending to each other),
so no position reaches seq_len; without document_mask they run 0..seq_len-1.
A retrieval mixture (lcx.data.mixture) may take some rows; which ones is a function of (seed, g)
too, so all of the above holds with it.

PoSE (positional skip-wise training, Zhu et al. 2024; pose_target_len > seq_len): each row's
positions are split in two chunks at a uniform point, and the second chunk's are shifted by a
uniform skip in [0, target - seq_len], so a fine-tune at seq_len sees the relative distances of
the target length (the highest position is target - 1). The split and skip are a function of
(seed, g) as well.
"""
import concurrent.futures
import functools
from typing import Iterator

import numpy as np

from lcx.data import token_cache
from lcx.data.sources import Documents
from lcx.data.tokenizers import Tokenizer


class PackedStream:
  """Batches of packed sequences for this process's rows of the global batch."""

  def __init__(self, docs: Documents, tokenizer: Tokenizer, *, seq_len: int, global_batch: int,
               seed: int, document_mask: bool = True, process_index: int = 0,
               process_count: int = 1, cache_dir: str | None = None, mixture=None,
               progress: bool = True, pose_target_len: int = 0):
    if global_batch % process_count:
      raise ValueError(f"data.batch_size={global_batch} must be divisible by the number of "
                       f"processes ({process_count})")
    self.docs, self.tokenizer = docs, tokenizer
    self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
    self.document_mask = document_mask
    if pose_target_len and pose_target_len <= seq_len:
      raise ValueError(f"data.pose_target_len={pose_target_len} must exceed data.seq_len="
                       f"{seq_len} (the length PoSE's skips stretch the positions to), or be 0")
    self.pose_target_len = pose_target_len
    self.mixture = mixture  # lcx.data.mixture.RetrievalMixture: rows it takes are its own
    self.local_batch = global_batch // process_count
    self.first_row = process_index * self.local_batch
    # every document's tokens, tokenized once (lcx.data.token_cache); +1 for each one's EOS
    self.cache = token_cache.prepare(docs, tokenizer, cache_dir or f"{docs.data_dir}/lcx_cache",
                                     progress=progress)
    self.lengths = self.cache.lengths() + 1
    self.chunks_per_epoch = int(self.lengths.sum()) // (seq_len + 1)
    if self.chunks_per_epoch < 1:
      raise ValueError(f"{docs.name}/{docs.split} has {int(self.lengths.sum())} tokens, fewer than "
                       f"one sequence of data.seq_len={seq_len}")

  @functools.lru_cache(maxsize=2)
  def _epoch(self, epoch: int):
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.lengths))
    ends = np.cumsum(self.lengths[order])
    chunk_order = rng.permutation(self.chunks_per_epoch)
    return order, ends, chunk_order

  def example(self, index: int) -> dict[str, np.ndarray]:
    """The index-th example of the infinite stream: tokens, targets, positions, segment_ids and
    the loss weight of each target (1 but for retrieval answers; lcx.data.mixture)."""
    row = self._packed(index) if self.mixture is None or not self.mixture.takes(index) else (
        self.mixture.example(index))
    if self.pose_target_len:
      row["positions"] = pose_positions(row["positions"], self.pose_target_len, self.seed, index)
    return row

  def _packed(self, index: int) -> dict[str, np.ndarray]:
    epoch, j = divmod(index, self.chunks_per_epoch)
    order, ends, chunk_order = self._epoch(epoch)
    span = self.seq_len + 1
    start = int(chunk_order[j]) * span
    stop = start + span
    first = int(np.searchsorted(ends, start, side="right"))
    pieces, positions, segments = [], [], []
    doc_rank = first
    while sum(len(p) for p in pieces) < span:
      doc_start = int(ends[doc_rank - 1]) if doc_rank else 0
      doc_tokens = np.concatenate([np.array([self.tokenizer.eos_id], np.int32),
                                   self.cache.tokens(int(order[doc_rank]))])
      lo, hi = max(start - doc_start, 0), min(stop - doc_start, len(doc_tokens))
      pieces.append(doc_tokens[lo:hi])
      positions.append(np.arange(hi - lo))
      segments.append(np.full(hi - lo, doc_rank - first + 1))
      doc_rank += 1
    tokens = np.concatenate(pieces).astype(np.int32)
    if self.document_mask:
      pos = np.concatenate(positions).astype(np.int32)[:-1]
      seg = np.concatenate(segments).astype(np.int32)[:-1]
    else:
      pos = np.arange(self.seq_len, dtype=np.int32)
      seg = np.ones(self.seq_len, np.int32)
    return {"tokens": tokens[:-1], "targets": tokens[1:], "positions": pos, "segment_ids": seg,
            "weights": np.ones(self.seq_len, np.float32)}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch at `step`, each array (local_batch, seq_len)."""
    base = step * self.global_batch + self.first_row
    rows = [self.example(base + r) for r in range(self.local_batch)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def iterate(self, start_step: int, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Batches from start_step on, built ahead in a background thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
      pending = [pool.submit(self.batch, start_step + i) for i in range(prefetch)]
      step = start_step + prefetch
      while True:
        yield pending.pop(0).result()
        pending.append(pool.submit(self.batch, step))
        step += 1


# Keeps PoSE's draws apart from every other use of (seed, index).
_POSE_STREAM = 0x905E


def pose_positions(positions: np.ndarray, target_len: int, seed: int, index: int) -> np.ndarray:
  """PoSE's two chunks: positions from a uniform split point r in [1, L - 1] on shifted by a
  uniform skip u in [0, target_len - L] (L the row's length), a pure function of (seed, index)."""
  L = len(positions)
  rng = np.random.default_rng([seed, index, _POSE_STREAM])
  split = int(rng.integers(1, L))
  skip = int(rng.integers(0, target_len - L + 1))
  out = positions.copy()
  out[split:] += skip
  return out
