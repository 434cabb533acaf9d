"""Haystacks (the text a needle hides in) and the boundaries where needles may go.

A haystack hands out exactly n tokens on request, so a prompt fills its length to the token:
  TextHaystack   consecutive tokens from a random place in a split's documents (real text);
  NoiseHaystack  a fixed filler sentence repeated (the passkey papers' prose haystack).
Needles go in at boundaries, as in RULER: after a sentence (prose) or a line (code).
"""
import functools

import numpy as np

from lcx.data.tokenizers import Tokenizer

BOUNDARIES = ("sentence", "line")
_SENTENCE_END = frozenset(".!?")


class TextHaystack:
  """n consecutive tokens of `tokens` (a split's documents, concatenated) from a random offset."""

  def __init__(self, tokens: np.ndarray):
    if not len(tokens):
      raise ValueError("a retrieval haystack needs text; the split has none")
    self.tokens = np.asarray(tokens, np.int32)

  def take(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return _cycle(self.tokens, int(rng.integers(len(self.tokens))), n)


class NoiseHaystack(TextHaystack):
  """A filler sentence repeated, from a random place in it."""

  def __init__(self, tokenizer: Tokenizer, filler: str):
    super().__init__(tokenizer.encode(filler))


def _cycle(tokens: np.ndarray, start: int, n: int) -> np.ndarray:
  """n tokens from `start`, wrapping around to the beginning as often as needed."""
  reps = -(-(start + n) // len(tokens))
  return np.tile(tokens, max(reps, 1))[start:start + n]


@functools.lru_cache(maxsize=8)
def _last_chars(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """For each token id: its last character and the one before it within the token (as code
  points; -1 where there is none)."""
  last = np.full(tokenizer.vocab_size, -1, np.int32)
  before = np.full(tokenizer.vocab_size, -1, np.int32)
  for i in range(tokenizer.vocab_size):
    text = tokenizer.decode([i])
    if text:
      last[i] = ord(text[-1])
    if len(text) > 1:
      before[i] = ord(text[-2])
  return last, before


def boundaries(tokens: np.ndarray, tokenizer: Tokenizer, kind: str) -> np.ndarray:
  """Indices b in [0, n] where a needle may go before tokens[b]: the start, and after every line
  (`line`) or every sentence, i.e. after . ! or ? and a space or newline (`sentence`, which also
  takes line ends). The end counts only when it is one of those."""
  if kind not in BOUNDARIES:
    raise ValueError(f"boundary {kind!r} is unknown; allowed: {', '.join(BOUNDARIES)}")
  last, before = _last_chars(tokenizer)
  tokens = np.asarray(tokens)
  end = last[tokens]
  ok = end == ord("\n")
  if kind == "sentence":
    prev = before[tokens].copy()  # the character before each token's last one
    single = prev < 0
    prev[single] = np.concatenate([[-1], end[:-1]])[single]
    ends_sentence = np.isin(prev, [ord(c) for c in _SENTENCE_END])
    ok |= (end == ord(" ")) & ends_sentence
  inner = np.flatnonzero(ok) + 1
  return np.unique(np.concatenate([[0], inner]))


def nearest(points: np.ndarray, target: float) -> int:
  """The point closest to target (the earlier one on a tie)."""
  return int(points[np.argmin(np.abs(points - target))])


class DocumentHaystack:
  """n consecutive tokens of a split's documents from a random place, read on demand (the
  training mixture's haystack: a corpus too large to hold in memory). With a token cache of the
  split (lcx.data.token_cache) the documents are read from it instead of encoded again."""

  def __init__(self, docs, tokenizer: Tokenizer, cache=None):
    if not len(docs):
      raise ValueError(f"a retrieval haystack needs text; {docs.name}/{docs.split} has none")
    self.docs, self.tokenizer = docs, tokenizer
    self._tokens = cache.tokens if cache is not None else (
        lambda i: tokenizer.encode(docs[i]))

  def take(self, rng: np.random.Generator, n: int) -> np.ndarray:
    index = int(rng.integers(len(self.docs)))
    pieces, have = [], 0
    for step in range(len(self.docs)):
      tokens = self._tokens((index + step) % len(self.docs))
      if step == 0 and len(tokens):
        tokens = tokens[int(rng.integers(len(tokens))):]
      pieces.append(tokens)
      have += len(tokens)
      if have >= n:
        break
    return _cycle(np.concatenate(pieces).astype(np.int32), 0, n) if have else np.zeros(0, np.int32)
