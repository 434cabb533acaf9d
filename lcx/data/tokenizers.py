"""Tokenizers: text bytes -> int32 ids. The byte tokenizer needs no download.

Any tokenizer with this interface works with the data stream; a SentencePiece model can fill it
by implementing `encode`, `decode`, `byte_length`, `vocab_size`, `eos_id` and `name`.
"""
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
  name: str  # identifies the tokenizer in caches and saved configs
  vocab_size: int
  eos_id: int  # separates documents in the packed stream and starts each one

  def encode(self, text: bytes) -> np.ndarray: ...

  def decode(self, ids) -> str: ...

  def byte_length(self, ids) -> int:
    """UTF-8 bytes of text the ids stand for (special tokens count 0): for bits per byte."""
    ...


class ByteTokenizer:
  """Ids 0-255 are the UTF-8 bytes; then PAD and EOS."""
  name = "byte"
  pad_id = 256
  eos_id = 257
  vocab_size = 258

  def encode(self, text: bytes | str) -> np.ndarray:
    if isinstance(text, str):
      text = text.encode("utf-8")
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    data = bytes(int(i) for i in np.asarray(ids).ravel() if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")

  def byte_length(self, ids) -> int:
    return int(np.count_nonzero(np.asarray(ids) < 256))


TOKENIZERS = {"byte": ByteTokenizer}


def make_tokenizer(name: str) -> Tokenizer:
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={name!r} is unknown; allowed: {', '.join(TOKENIZERS)}")
  return TOKENIZERS[name]()
