"""A split of a corpus tokenized once, on disk, read back by slicing.

Tokenizing on the fly re-reads and re-encodes a whole document for every sequence cut from it (a
pg19 book is ~400 KB, a 1,024-token sequence a few KB of it), which no subword tokenizer does at
an accelerator's pace. The cache holds every document's tokens back to back in one flat file
(uint8 for bytes, uint16 or uint32 for larger vocabularies) and where each document starts, so
a sequence is a slice of a memory map: random access, nothing decoded, the packed stream still a
pure function of (seed, step).

One folder per (corpus, split, text key, tokenizer: its name carries the model file's hash),
under data_dir/lcx_cache; built under a lock (the processes of one host build it once), written
to a temporary folder and renamed, so an interrupted build leaves nothing that looks finished.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import time

import numpy as np
from tqdm import tqdm

from lcx.data.sources import Documents
from lcx.data.tokenizers import Tokenizer

_FORMAT = 1  # bumped when the layout changes: older folders are rebuilt
_BATCH = 256  # documents encoded per call (SentencePiece encodes a list on several threads)


def _dtype(tokenizer: Tokenizer):
  bound = getattr(tokenizer, "id_bound", tokenizer.vocab_size)  # ids encode() can return
  return np.uint8 if bound <= 256 else np.uint16 if bound <= 65536 else np.uint32


class TokenCache:
  """len() documents; tokens(i) their ids (without the EOS the stream puts before each);
  lengths() how many each has."""

  def __init__(self, folder: pathlib.Path):
    meta = json.loads((folder / "meta.json").read_text())
    self.folder, self.meta = folder, meta
    self.offsets = np.load(folder / "offsets.npy")
    total = int(self.offsets[-1])
    # an empty memory map is not allowed; an empty split has nothing to read anyway
    self._tokens = (np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(total,))
                    if total else np.zeros(0, meta["dtype"]))

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def tokens(self, index: int) -> np.ndarray:
    return self._tokens[self.offsets[index]:self.offsets[index + 1]]

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


def folder_for(docs: Documents, tokenizer: Tokenizer, cache_dir: str | pathlib.Path) -> pathlib.Path:
  key = hashlib.sha256(f"{_FORMAT}|{docs.name}|{docs.split}|{docs.text_key}|"
                       f"{tokenizer.name}".encode()).hexdigest()[:16]
  return pathlib.Path(cache_dir).expanduser() / f"tokens-{key}"


def _complete(folder: pathlib.Path, docs: Documents) -> bool:
  try:
    meta = json.loads((folder / "meta.json").read_text())
  except (OSError, ValueError):
    return False
  if meta.get("format") != _FORMAT or meta.get("documents") != len(docs):
    return False
  # a tokens file cut short (a disk that filled, a copy stopped half-way) is built again
  expected = meta.get("tokens", -1) * np.dtype(meta.get("dtype", "uint8")).itemsize
  try:
    return (folder / "tokens.bin").stat().st_size == expected and (folder / "offsets.npy").is_file()
  except OSError:
    return False


@contextlib.contextmanager
def _lock(cache_dir: pathlib.Path):
  cache_dir.mkdir(parents=True, exist_ok=True)
  with open(cache_dir / ".lcx-tokens.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def prepare(docs: Documents, tokenizer: Tokenizer, cache_dir: str | pathlib.Path,
            progress: bool = True) -> TokenCache:
  """The cache of this split and tokenizer, built first if it is not on disk."""
  folder = folder_for(docs, tokenizer, cache_dir)
  if not _complete(folder, docs):
    with _lock(folder.parent):
      if not _complete(folder, docs):  # another process may have built it meanwhile
        _build(docs, tokenizer, folder, progress)
  return TokenCache(folder)


def _encode_many(tokenizer: Tokenizer, texts: list[bytes]) -> list[np.ndarray]:
  encode_many = getattr(tokenizer, "encode_many", None)
  return encode_many(texts) if encode_many else [tokenizer.encode(t) for t in texts]


def _build(docs: Documents, tokenizer: Tokenizer, folder: pathlib.Path, progress: bool) -> None:
  dtype = _dtype(tokenizer)
  partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  offsets = np.zeros(len(docs) + 1, np.int64)
  text_bytes, start = 0, time.perf_counter()
  bar = tqdm(total=len(docs), unit="doc", desc=f"tokenizing {docs.name}/{docs.split}",
             disable=not progress, leave=False)
  with open(partial / "tokens.bin", "wb") as out:
    for first in range(0, len(docs), _BATCH):
      texts = [docs[i] for i in range(first, min(first + _BATCH, len(docs)))]
      for i, ids in enumerate(_encode_many(tokenizer, texts), start=first):
        out.write(np.asarray(ids).astype(dtype).tobytes())
        offsets[i + 1] = offsets[i] + len(ids)
      text_bytes += sum(len(t) for t in texts)
      bar.update(len(texts))
      bar.set_postfix(tok_s=f"{offsets[first + len(texts)] / (time.perf_counter() - start):,.0f}")
  bar.close()
  np.save(partial / "offsets.npy", offsets)
  seconds = time.perf_counter() - start
  (partial / "meta.json").write_text(json.dumps({
      "format": _FORMAT, "corpus": docs.name, "split": docs.split, "text_key": docs.text_key,
      "tokenizer": tokenizer.name, "dtype": np.dtype(dtype).name, "documents": len(docs),
      "tokens": int(offsets[-1]), "text_bytes": text_bytes, "seconds": round(seconds, 3),
      "seconds_per_gb": round(seconds / max(text_bytes, 1) * 1e9, 1)}, indent=2) + "\n")
  shutil.rmtree(folder, ignore_errors=True)  # a folder from an older format
  os.replace(partial, folder)
