"""The packed stream against grain, on the same documents (benchmarks/README.md, "Why our stream
and not grain"). grain is not one of lcx's requirements; install it beside them first:

  .venv/bin/pip install grain==0.2.18
  .venv/bin/python benchmarks/grain_comparison.py [TOKENIZER] [DATA_DIR]

TOKENIZER (default byte) as data.tokenizer takes it; DATA_DIR (default the presets') holds the
bundled corpus, built on first use. One process, 256 rows per batch, pystdlib's train split.
"""
import pathlib
import sys
import tempfile
import time

import grain
import numpy as np
from array_record.python import array_record_module
from grain import experimental as grain_experimental

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lcx.data import token_cache  # noqa: E402
from lcx.data.sources import Documents  # noqa: E402
from lcx.data.stream import PackedStream  # noqa: E402
from lcx.data.tokenizers import make_tokenizer  # noqa: E402

BATCH, TIMED = 256, 20


def rate(name: str, length: int, next_batch) -> None:
  next_batch()  # the first batch pays for the epoch's order and the file's opening
  start = time.perf_counter()
  for _ in range(TIMED):
    tokens = next_batch()
  seconds = (time.perf_counter() - start) / TIMED
  assert tokens.shape == (BATCH, length), tokens.shape
  print(f"{name:34s} L={length:5d} {1e3 * seconds:7.1f} ms per batch "
        f"{BATCH * length / seconds / 1e6:6.1f}M tokens/s")


class CacheSource:
  """grain's random-access source protocol over lcx's token cache."""

  def __init__(self, cache):
    self.cache = cache

  def __len__(self):
    return len(self.cache)

  def __getitem__(self, index):
    return np.asarray(self.cache.tokens(index))


def main() -> None:
  tokenizer = make_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "byte")
  data_dir = sys.argv[2] if len(sys.argv) > 2 else "~/.cache/lcx/tensorflow_datasets"
  docs = Documents("pystdlib", "train", data_dir=data_dir)
  cache = token_cache.prepare(docs, tokenizer, f"{docs.data_dir}/lcx_cache", progress=False)
  dtype = cache.meta["dtype"]
  # one record per document, kept in the temporary folder for the next run
  records = pathlib.Path(tempfile.gettempdir()) / f"lcx-grain-{cache.folder.name}.array_record"
  if not records.exists():
    writer = array_record_module.ArrayRecordWriter(str(records), "group_size:1")
    for i in range(len(cache)):
      writer.write(np.asarray(cache.tokens(i)).tobytes())
    writer.close()
  print(f"{len(cache)} documents, {cache.meta['tokens']:,} tokens ({tokenizer.name})")
  for length in (1024, 4096):
    stream = PackedStream(docs, tokenizer, seq_len=length, global_batch=BATCH, seed=0,
                          progress=False)
    steps = iter(range(10 ** 9))
    rate("lcx PackedStream (token cache)", length, lambda: stream.batch(next(steps))["tokens"])
    for name, source, decode in (
        ("grain over array_record", grain.sources.ArrayRecordDataSource(str(records)),
         lambda record: np.frombuffer(record, dtype)),
        ("grain over lcx's token cache", CacheSource(cache), lambda ids: ids)):
      documents = (grain.MapDataset.source(source).shuffle(seed=0).repeat()
                   .map(lambda r, decode=decode: {"tokens": decode(r)}).to_iter_dataset())
      batches = iter(grain_experimental.ConcatThenSplitIterDataset(
          documents, length_struct={"tokens": length}).batch(BATCH))
      rate(name, length, lambda: next(batches)["tokens"])


if __name__ == "__main__":
  main()
