"""A split of a corpus tokenized once, on disk, read back by slicing.

Tokenizing on the fly re-reads and re-encodes a whole document for every sequence cut from it (a
pg19 book is ~400 KB, a 1,024-token sequence a few KB of it), which no subword tokenizer does at
an accelerator's pace. The cache holds every document's tokens back to back in one flat file
(uint8 for bytes, uint16 or uint32 for larger vocabularies) and where each document starts, so
a sequence is a slice of a memory map: random access, nothing decoded, the packed stream still a
pure function of (seed, step).

One folder per (corpus, split, text key, tokenizer: its name carries the model file's hash),
under data_dir/lcx_cache; built under a lock (the processes of one host build it once), written
to a temporary folder and renamed, so an interrupted build leaves nothing that looks finished (and
the next build on that host removes what it left).

The build records a CRC-32 of every block of the tokens file (and of the offsets), and a reader
checks each block the first time it slices into it: a file damaged on disk is never read. Checking
as blocks are first read keeps the start of a run independent of the cache's size (CRC-32 runs at
~4 GB/s here, a 10 GB cache would add seconds to every start); a cache small enough to check at
once is checked when it is opened, and rebuilt there if it is damaged. A damaged block found
later stops the reader with DamagedCache, after removing the cache so that the next start builds
it again.
"""
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import socket
import time
import zlib

import numpy as np
from tqdm import tqdm

from lcx.data.sources import Documents
from lcx.files import naming
from lcx.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)
_FORMAT = 2  # bumped when the layout changes: older folders are rebuilt (2: checksums)
_BATCH = 256  # documents encoded per call (SentencePiece encodes a list on several threads)
BLOCK_BYTES = 1 << 20  # one CRC-32 per MiB of tokens: a first read checks ~0.3 ms of data
CHECK_AT_OPEN_BYTES = 256 << 20  # caches up to this size are checked whole when opened (~0.1 s)


class DamagedCache(ValueError):
  """A token cache's files differ from the checksums written when it was built."""


def _dtype(tokenizer: Tokenizer):
  bound = getattr(tokenizer, "id_bound", tokenizer.vocab_size)  # ids encode() can return
  return np.uint8 if bound <= 256 else np.uint16 if bound <= 65536 else np.uint32


class TokenCache:
  """len() documents; tokens(i) their ids (without the EOS the stream puts before each);
  lengths() how many each has. Every block of the tokens file is checked against its checksum
  the first time tokens() reads from it (a damaged one removes the cache: DamagedCache);
  check(lo, hi) checks a byte range now."""

  def __init__(self, folder: pathlib.Path):
    meta = json.loads((folder / "meta.json").read_text())
    self.folder, self.meta = folder, meta
    offsets_bytes = (folder / "offsets.npy").read_bytes()
    if zlib.crc32(offsets_bytes) != meta["offsets_crc32"]:
      raise self._damaged("offsets.npy does not match its checksum")
    self.offsets = np.load(io.BytesIO(offsets_bytes))
    self.itemsize = np.dtype(meta["dtype"]).itemsize
    self.block_bytes = meta["block_bytes"]
    self.checksums = np.load(folder / "checksums.npy")
    total = int(self.offsets[-1])
    if len(self.checksums) != -(-total * self.itemsize // self.block_bytes):
      raise self._damaged("checksums.npy does not have one checksum per block")
    self._checked = np.zeros(len(self.checksums), bool)
    # an empty memory map is not allowed; an empty split has nothing to read anyway
    self._tokens = (np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(total,))
                    if total else np.zeros(0, meta["dtype"]))

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def tokens(self, index: int) -> np.ndarray:
    start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
    try:
      self.check(start * self.itemsize, stop * self.itemsize)
    except DamagedCache as e:
      with _lock(self.folder.parent):  # never read again: the next start builds it anew
        shutil.rmtree(self.folder, ignore_errors=True)
      raise DamagedCache(f"{e}; removed it") from None
    return self._tokens[start:stop]

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def check(self, lo: int = 0, hi: int | None = None) -> None:
    """DamagedCache unless the blocks holding bytes [lo, hi) of tokens.bin match their checksums
    (blocks already checked are not read again)."""
    hi = self.meta["tokens"] * self.itemsize if hi is None else hi
    if hi <= lo:
      return
    first, last = lo // self.block_bytes, (hi - 1) // self.block_bytes
    if self._checked[first:last + 1].all():
      return
    data = self._tokens.view(np.uint8) if len(self._tokens) else np.zeros(0, np.uint8)
    for block in range(first, last + 1):
      if self._checked[block]:
        continue
      piece = data[block * self.block_bytes:(block + 1) * self.block_bytes]
      if zlib.crc32(piece) != int(self.checksums[block]):
        raise self._damaged(f"bytes {block * self.block_bytes:,}-"
                            f"{block * self.block_bytes + len(piece):,} of tokens.bin do not "
                            "match their checksum")
      self._checked[block] = True

  def _damaged(self, what: str) -> DamagedCache:
    return DamagedCache(f"the token cache {self.folder} ({self.meta.get('corpus')}/"
                        f"{self.meta.get('split')}, {self.meta.get('tokenizer')}) is damaged: {what}"
                        " (changed on disk since it was built)")


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
            progress: bool = True, check_at_open_bytes: int = CHECK_AT_OPEN_BYTES) -> TokenCache:
  """The cache of this split and tokenizer, built first if it is not on disk or is damaged (a
  cache of up to check_at_open_bytes is checked whole now, a larger one as it is read)."""
  folder = folder_for(docs, tokenizer, cache_dir)
  cache = _open_checked(folder, docs, check_at_open_bytes)
  if cache is None:
    with _lock(folder.parent):
      _remove_abandoned_builds(folder.parent)
      # another process may have built it meanwhile (what was wrong is said once)
      cache = _open_checked(folder, docs, check_at_open_bytes, warn=False)
      if cache is None:
        _build(docs, tokenizer, folder, progress)
        cache = TokenCache(folder)
  return cache


def _open_checked(folder: pathlib.Path, docs: Documents, check_at_open_bytes: int,
                  warn: bool = True):
  """The finished cache in folder, checked whole when small; None when it must be (re)built."""
  if not _complete(folder, docs):
    return None
  try:
    cache = TokenCache(folder)
    if cache.meta["tokens"] * cache.itemsize <= check_at_open_bytes:
      cache.check()
    return cache
  except (DamagedCache, OSError, ValueError, KeyError) as e:
    if warn:
      log.warning("%s; building it again", e if isinstance(e, DamagedCache) else
                  f"the token cache {folder} cannot be read ({type(e).__name__}: {e})")
    return None


def _remove_abandoned_builds(cache_dir: pathlib.Path) -> None:
  """Removes the temporary folders of this host's builds that were killed: under the build lock,
  no build of this host is running (other hosts sharing the folder keep theirs)."""
  for partial in cache_dir.glob(f"tokens-*.partial-{socket.gethostname()}-*"):
    shutil.rmtree(partial, ignore_errors=True)


def _encode_many(tokenizer: Tokenizer, texts: list[bytes]) -> list[np.ndarray]:
  encode_many = getattr(tokenizer, "encode_many", None)
  return encode_many(texts) if encode_many else [tokenizer.encode(t) for t in texts]


def _build(docs: Documents, tokenizer: Tokenizer, folder: pathlib.Path, progress: bool) -> None:
  partial = folder.with_name(f"{folder.name}.partial-{socket.gethostname()}-{os.getpid()}")
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  try:
    with naming(folder):  # a full disk's error names no file
      _write(docs, tokenizer, partial, progress)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  shutil.rmtree(folder, ignore_errors=True)  # a folder from an older format, or damaged
  os.replace(partial, folder)


def _write(docs: Documents, tokenizer: Tokenizer, partial: pathlib.Path, progress: bool) -> None:
  dtype = _dtype(tokenizer)
  offsets = np.zeros(len(docs) + 1, np.int64)
  checksums = _BlockChecksums(BLOCK_BYTES)
  text_bytes, start = 0, time.perf_counter()
  bar = tqdm(total=len(docs), unit="doc", desc=f"tokenizing {docs.name}/{docs.split}",
             disable=not progress, leave=False)
  with open(partial / "tokens.bin", "wb") as out:
    for first in range(0, len(docs), _BATCH):
      texts = [docs[i] for i in range(first, min(first + _BATCH, len(docs)))]
      for i, ids in enumerate(_encode_many(tokenizer, texts), start=first):
        data = np.asarray(ids).astype(dtype).tobytes()
        out.write(data)
        checksums.add(data)
        offsets[i + 1] = offsets[i] + len(ids)
      text_bytes += sum(len(t) for t in texts)
      bar.update(len(texts))
      bar.set_postfix(tok_s=f"{offsets[first + len(texts)] / (time.perf_counter() - start):,.0f}")
  bar.close()
  np.save(partial / "offsets.npy", offsets)
  np.save(partial / "checksums.npy", checksums.finish())
  seconds = time.perf_counter() - start
  (partial / "meta.json").write_text(json.dumps({
      "format": _FORMAT, "corpus": docs.name, "split": docs.split, "text_key": docs.text_key,
      "tokenizer": tokenizer.name, "dtype": np.dtype(dtype).name, "documents": len(docs),
      "tokens": int(offsets[-1]), "text_bytes": text_bytes, "seconds": round(seconds, 3),
      "seconds_per_gb": round(seconds / max(text_bytes, 1) * 1e9, 1),
      "block_bytes": BLOCK_BYTES,
      "offsets_crc32": zlib.crc32((partial / "offsets.npy").read_bytes())}, indent=2) + "\n")


class _BlockChecksums:
  """CRC-32 of each block_bytes block of a stream written in pieces of any size."""

  def __init__(self, block_bytes: int):
    self.block_bytes, self.done, self.crc, self.filled = block_bytes, [], 0, 0

  def add(self, data: bytes) -> None:
    view = memoryview(data)
    while len(view):
      take = min(len(view), self.block_bytes - self.filled)
      self.crc = zlib.crc32(view[:take], self.crc)
      self.filled += take
      view = view[take:]
      if self.filled == self.block_bytes:
        self.done.append(self.crc)
        self.crc, self.filled = 0, 0

  def finish(self) -> np.ndarray:
    return np.array(self.done + ([self.crc] if self.filled else []), np.uint32)
