"""Tokenizers: text bytes -> int32 ids. The byte tokenizer (the default) needs no download;
`sentencepiece:PATH` loads a SentencePiece model file (train one with `python -m lcx.tokenizer`).

Any tokenizer with this interface works with the data stream, evaluation and the retrieval tasks:
`encode`, `decode`, `byte_length`, `vocab_size`, `eos_id` and `name`.
"""
import functools
import hashlib
import os
import pathlib
from typing import Protocol

import numpy as np

SENTENCEPIECE = "sentencepiece:"


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
  id_bound = 256  # encode() returns bytes only: a token cache stores them as uint8

  def encode(self, text: bytes | str) -> np.ndarray:
    if isinstance(text, str):
      text = text.encode("utf-8")
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    data = bytes(int(i) for i in np.asarray(ids).ravel() if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")

  def byte_length(self, ids) -> int:
    return int(np.count_nonzero(np.asarray(ids) < 256))


class SentencePieceTokenizer:
  """A SentencePiece model file. Its ids are the model's; documents are separated by its
  end-of-sequence piece. `name` carries a hash of the file, so caches keyed by it (document
  lengths) never mix two models saved at one path."""

  def __init__(self, path: str):
    import sentencepiece  # only runs with a subword tokenizer need the package loaded
    where = f"data.tokenizer={SENTENCEPIECE}{path}"
    try:
      proto = pathlib.Path(path).expanduser().read_bytes()
    except FileNotFoundError:
      raise ValueError(f"{where}: no such file; train one with `python -m lcx.tokenizer train "
                       "--config ... --vocab_size N --out PATH`") from None
    except OSError as e:
      raise ValueError(f"{where}: cannot be read ({e.strerror or e})") from None
    self._sp = sentencepiece.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(proto)
    except Exception as e:  # the library raises bare RuntimeErrors/OSErrors for a bad proto
      raise ValueError(f"{where}: not a SentencePiece model file ({e})") from None
    self.sha256 = hashlib.sha256(proto).hexdigest()
    self.name = f"sentencepiece-{self.sha256[:16]}"
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f"{where}: the model has no end-of-sequence piece (eos_id=-1), which "
                       "separates documents; train it with one (python -m lcx.tokenizer does)")
    self._special = np.array([self._sp.is_control(i) or self._sp.is_unknown(i)
                              for i in range(self.vocab_size)])
    # UTF-8 bytes each piece stands for: 1 for a byte piece (<0x41>), 0 for control pieces; the
    # whitespace marker is one space.
    self._bytes = np.array([
        0 if self._special[i] else 1 if self._sp.is_byte(i)
        else len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        for i in range(self.vocab_size)], np.int64)

  def encode(self, text: bytes | str) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return np.asarray(self._sp.encode(text), np.int32)

  def encode_many(self, texts: list[bytes]) -> list[np.ndarray]:
    """encode() of each, on SentencePiece's own threads (preparing a token cache)."""
    texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t for t in texts]
    return [np.asarray(ids, np.int32) for ids in self._sp.encode(texts, num_threads=os.cpu_count())]

  def _known(self, ids) -> list[int]:
    ids = np.asarray(ids).ravel()
    ids = ids[(ids >= 0) & (ids < self.vocab_size)]
    return [int(i) for i in ids if not self._special[i]]

  def decode(self, ids) -> str:
    return self._sp.decode(self._known(ids))

  def byte_length(self, ids) -> int:
    ids = np.asarray(ids).ravel()
    return int(self._bytes[ids[(ids >= 0) & (ids < self.vocab_size)]].sum())


TOKENIZERS = {"byte": ByteTokenizer}
ALLOWED = f"{', '.join(TOKENIZERS)}, {SENTENCEPIECE}PATH"
# What data.tokenizer="" (not given) means; a fine-tune takes its source's tokenizer instead.
DEFAULT = "byte"


def make_tokenizer(name: str, sha256: str = "") -> Tokenizer:
  """The tokenizer data.tokenizer names; with `sha256` (a run's recorded hash of its model
  file), a SentencePiece file that no longer matches is refused."""
  name = name or DEFAULT
  if name.startswith(SENTENCEPIECE):
    tokenizer = _sentencepiece(name.removeprefix(SENTENCEPIECE))
    if sha256 and tokenizer.sha256 != sha256:
      raise ValueError(f"data.tokenizer={name}: the model file has changed since this run "
                       f"recorded it (sha256 {sha256[:16]}..., now {tokenizer.sha256[:16]}...); "
                       "restore the file the run was trained with, or start a new run")
    return tokenizer
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={name!r} is unknown; allowed: {ALLOWED}")
  return TOKENIZERS[name]()


def _sentencepiece(path: str) -> SentencePieceTokenizer:
  """Loaded once per file content (config checks, training and evaluation all ask)."""
  resolved = pathlib.Path(path).expanduser()
  try:
    stat = resolved.stat()
  except OSError:
    return SentencePieceTokenizer(path)  # which says what is wrong
  return _cached_sentencepiece(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _cached_sentencepiece(path: str, mtime_ns: int, size: int) -> SentencePieceTokenizer:
  del mtime_ns, size  # the cache key: a rewritten file is loaded again
  return SentencePieceTokenizer(path)
