"""Tokenizers: text bytes -> int32 ids. The byte tokenizer (the default) needs no download;
`sentencepiece:PATH` loads a SentencePiece model file (train one with `python -m lcx.tokenizer`);
`hf:PATH` a `tokenizer.json` of the Hugging Face `tokenizers` library (any pretrained model's,
and what `python -m lcx.convert import` writes beside an imported run).

Any tokenizer with this interface works with the data stream, evaluation and the retrieval tasks:
`encode`, `decode`, `byte_length`, `vocab_size`, `eos_id` and `name`.
"""
import functools
import hashlib
import json
import os
import pathlib
from typing import Protocol

import numpy as np

SENTENCEPIECE = "sentencepiece:"
HF = "hf:"
FILE_PREFIXES = (SENTENCEPIECE, HF)  # tokenizers read from a file, recorded by its hash


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


# End-of-sequence spellings, most specific first: what separates documents when a tokenizer.json
# comes without a tokenizer_config.json naming its eos_token.
_EOS_SPELLINGS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")


def _byte_level_alphabet() -> dict[str, int]:
  """GPT-2's byte-level BPE spells each byte as one printable character: char -> byte."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  spelled, extra = {}, 0
  for b in range(256):
    if b in printable:
      spelled[chr(b)] = b
    else:
      spelled[chr(256 + extra)] = b
      extra += 1
  return spelled


BYTE_LEVEL_ALPHABET = _byte_level_alphabet()


def _uses(node, kind: str) -> bool:
  """Whether a tokenizer.json component (or a Sequence of them) is of `kind`."""
  if not isinstance(node, dict):
    return False
  return node.get("type") == kind or any(
      _uses(n, kind) for key in ("decoders", "pretokenizers") for n in node.get(key) or ())


class HFTokenizer:
  """A `tokenizer.json` read by the `tokenizers` library (byte-level BPE, SentencePiece-style
  BPE or Unigram, WordPiece). Documents are separated by the eos_token that a tokenizer_config.json
  beside it names, else by the first of the usual spellings the vocabulary has. `name` and
  `sha256` cover the file and that choice, so a changed file is refused like a SentencePiece one.
  Text is encoded without the special tokens a post-processor would add (lcx places its own
  separator), as `add_special_tokens=False` does in transformers."""

  def __init__(self, path: str):
    import tokenizers  # only runs with such a tokenizer need the package loaded
    where = f"data.tokenizer={HF}{path}"
    file = pathlib.Path(path).expanduser()
    try:
      raw = file.read_bytes()
      spec = json.loads(raw)
      self._tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    except FileNotFoundError:
      raise ValueError(f"{where}: no such file; pass the tokenizer.json of a model (an imported "
                       "run has one beside its config.json)") from None
    except OSError as e:
      raise ValueError(f"{where}: cannot be read ({e.strerror or e})") from None
    except Exception as e:  # not JSON, or JSON the library cannot build a tokenizer from
      raise ValueError(f"{where}: not a tokenizer.json of the tokenizers library "
                       f"({str(e).splitlines()[0][:200]})") from None
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    eos = _configured_eos(file.with_name("tokenizer_config.json"))
    if eos is None:
      eos = next((t for t in _EOS_SPELLINGS if self._tok.token_to_id(t) is not None), None)
    if eos is None or self._tok.token_to_id(eos) is None:
      raise ValueError(f"{where}: no end-of-sequence token to separate documents "
                       f"({'the configured ' + repr(eos) + ' is not in the vocabulary' if eos else 'none of ' + ', '.join(_EOS_SPELLINGS)}); "
                       "name one as eos_token in a tokenizer_config.json beside it")
    self.eos_token, self.eos_id = eos, self._tok.token_to_id(eos)
    self.sha256 = hashlib.sha256(raw + b"\0eos_token=" + eos.encode("utf-8")).hexdigest()
    self.name = f"hf-{self.sha256[:16]}"
    self._bytes = self._byte_lengths(spec)

  def _byte_lengths(self, spec: dict) -> np.ndarray:
    """UTF-8 bytes each id stands for: a byte-level token spells one byte a character; otherwise
    a SentencePiece-style piece is its text with the word marker as a space, <0xNN> one byte.
    Added (special) tokens count 0."""
    special = {t["id"] for t in spec.get("added_tokens", ()) if t.get("special")}
    byte_level = _uses(spec.get("decoder"), "ByteLevel") or _uses(spec.get("pre_tokenizer"),
                                                                 "ByteLevel")
    out = np.zeros(self.vocab_size, np.int64)
    for i in range(self.vocab_size):
      token = self._tok.id_to_token(i)
      if token is None or i in special:
        continue
      if byte_level and all(c in BYTE_LEVEL_ALPHABET for c in token):
        out[i] = len(token)
      elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        out[i] = 1
      else:
        out[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    return out

  def encode(self, text: bytes | str) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_many(self, texts: list[bytes]) -> list[np.ndarray]:
    """encode() of each, on the library's own threads (preparing a token cache)."""
    texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t for t in texts]
    return [np.asarray(e.ids, np.int32)
            for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

  def decode(self, ids) -> str:
    ids = np.asarray(ids).ravel()
    return self._tok.decode([int(i) for i in ids[(ids >= 0) & (ids < self.vocab_size)]],
                            skip_special_tokens=True)

  def byte_length(self, ids) -> int:
    ids = np.asarray(ids).ravel()
    return int(self._bytes[ids[(ids >= 0) & (ids < self.vocab_size)]].sum())


def _configured_eos(config_file: pathlib.Path) -> str | None:
  """The eos_token a tokenizer_config.json names (a string, or transformers' {"content": ...})."""
  try:
    eos = json.loads(config_file.read_text()).get("eos_token")
  except (OSError, ValueError, AttributeError):
    return None
  return eos.get("content") if isinstance(eos, dict) else eos


TOKENIZERS = {"byte": ByteTokenizer}
ALLOWED = f"{', '.join(TOKENIZERS)}, {SENTENCEPIECE}PATH, {HF}PATH"
# What data.tokenizer="" (not given) means; a fine-tune takes its source's tokenizer instead.
DEFAULT = "byte"


def make_tokenizer(name: str, sha256: str = "") -> Tokenizer:
  """The tokenizer data.tokenizer names; with `sha256` (a run's recorded hash of its tokenizer
  file), a file that no longer matches is refused."""
  name = name or DEFAULT
  for prefix, cls in _FILE_TOKENIZERS.items():
    if name.startswith(prefix):
      tokenizer = _from_file(cls, name.removeprefix(prefix))
      if sha256 and tokenizer.sha256 != sha256:
        raise ValueError(f"data.tokenizer={name}: the tokenizer file has changed since this run "
                         f"recorded it (sha256 {sha256[:16]}..., now {tokenizer.sha256[:16]}...); "
                         "restore the file the run was trained with, or start a new run")
      return tokenizer
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={name!r} is unknown; allowed: {ALLOWED}")
  return TOKENIZERS[name]()


_FILE_TOKENIZERS = {SENTENCEPIECE: SentencePieceTokenizer, HF: HFTokenizer}


def _from_file(cls, path: str):
  """Loaded once per file content (config checks, training and evaluation all ask); a
  tokenizer.json's tokenizer_config.json is part of it (its eos_token)."""
  resolved = pathlib.Path(path).expanduser()
  try:
    stats = tuple((s.st_mtime_ns, s.st_size) for s in (
        resolved.stat(), *(f.stat() for f in [resolved.with_name("tokenizer_config.json")]
                           if cls is HFTokenizer and f.exists())))
  except OSError:
    return cls(path)  # which says what is wrong
  return _cached(cls, path, stats)


@functools.lru_cache(maxsize=8)
def _cached(cls, path: str, stats: tuple):
  del stats  # the cache key: a rewritten file is loaded again
  return cls(path)
