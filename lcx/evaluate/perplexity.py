"""Perplexity against evaluation length: non-overlapping windows, sliding windows, and loss by
position inside the window.

All lengths score the same text: segments of k x L_common + 1 tokens cut from documents that are
at least that long (L_common is the longest evaluated length some document reaches), so a long
window really holds one document's context and the numbers at every length compare. Each
document is [EOS] + its tokens, as in training.
"""
import math
from typing import Callable

import numpy as np

from lcx.data.sources import Documents
from lcx.data.tokenizers import Tokenizer

Losses = Callable[[np.ndarray], np.ndarray]  # windows (N, L + 1) -> losses (N, L)


def document_tokens(docs: Documents, tokenizer: Tokenizer) -> list[np.ndarray]:
  return [np.concatenate([[tokenizer.eos_id], tokenizer.encode(docs[i])]).astype(np.int32)
          for i in range(len(docs))]


def common_segments(documents: list[np.ndarray], length: int, max_tokens: int) -> list[np.ndarray]:
  """Segments of k * length + 1 tokens from documents long enough, up to max_tokens targets."""
  segments, total = [], 0
  for tokens in documents:
    k = (len(tokens) - 1) // length
    k = min(k, max(1, (max_tokens - total) // length))
    if k < 1 or (segments and total >= max_tokens):
      continue
    segments.append(tokens[: k * length + 1])
    total += k * length
  return segments


def non_overlapping_windows(segment: np.ndarray, length: int) -> np.ndarray:
  """(n, length + 1) windows; consecutive windows share one token (a target, then an input)."""
  n = (len(segment) - 1) // length
  return np.stack([segment[i * length: i * length + length + 1] for i in range(n)])


def sliding_windows(segment: np.ndarray, length: int, stride: int):
  """(windows (n, length + 1), new (n,)): each window scores only its last new[i] targets, so
  every target of the segment is scored exactly once, with at least length - stride tokens of
  context after the first window."""
  targets = len(segment) - 1
  starts, new = [0], [length]
  while starts[-1] + length < targets:
    start = min(starts[-1] + stride, targets - length)
    new.append(start + length - (starts[-1] + length))
    starts.append(start)
  return np.stack([segment[s: s + length + 1] for s in starts]), np.array(new)


def _summary(loss_sum: float, tokens: int, nbytes: int) -> dict:
  loss = loss_sum / tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700)),
          "bits_per_byte": loss_sum / math.log(2) / max(nbytes, 1), "tokens": tokens,
          "bytes": nbytes}


def evaluate_non_overlapping(losses: Losses, segments, length: int, tokenizer: Tokenizer,
                             bins: int = 32, segment_len: int = 0, longppl=None) -> dict:
  """Loss and perplexity of non-overlapping windows, and the loss by position (log-spaced bins);
  for a model that runs segments (segment_len), also the mean loss of each segment of the window
  (`by_segment`: what a memory adds shows in the second and later); with `longppl` (a
  lcx.evaluate.longppl.LongPPL) and windows longer than its short one, LongPPL."""
  windows = np.concatenate([non_overlapping_windows(s, length) for s in segments])
  token_losses = losses(windows).astype(np.float64)
  nbytes = sum(tokenizer.byte_length(w[1:]) for w in windows)
  result = _summary(float(token_losses.sum()), token_losses.size, nbytes)
  per_position = token_losses.mean(axis=0)
  # Log-spaced bins: the curve is read on a log axis, where early positions need resolution too.
  edges = np.unique(np.concatenate([[0], np.geomspace(1, length, bins).astype(int)]))
  result["by_position"] = {
      "bin_start": edges[:-1].tolist(), "bin_end": edges[1:].tolist(),
      "loss": [float(per_position[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]}
  if segment_len and segment_len < length:
    starts = range(0, length, segment_len)
    result["by_segment"] = {"segment_len": segment_len, "loss": [
        float(per_position[a:a + segment_len].mean()) for a in starts]}
  if longppl is not None and length > longppl.window:
    result["longppl"] = longppl.measure(losses, windows, token_losses)
  return result


def evaluate_sliding(losses: Losses, segments, length: int, stride: int,
                     tokenizer: Tokenizer) -> dict:
  loss_sum, tokens, nbytes = 0.0, 0, 0
  for segment in segments:
    windows, new = sliding_windows(segment, length, stride)
    token_losses = losses(windows).astype(np.float64)
    for row, n in zip(range(len(windows)), new):
      loss_sum += float(token_losses[row, length - n:].sum())
      tokens += int(n)
      nbytes += tokenizer.byte_length(windows[row, length + 1 - n:])
  result = _summary(loss_sum, tokens, nbytes)
  result["stride"] = stride
  return result
