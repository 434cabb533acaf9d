"""The input pipeline alone: how fast the packed stream hands out batches from the token cache,
per tokenizer and length, for one host; what the cache's first preparation cost, and how fast its
checksums are verified."""
import time

from lcx.data import token_cache
from lcx.data.sources import Documents
from lcx.data.stream import PackedStream
from lcx.data.tokenizers import make_tokenizer


def pipeline_rows(docs: Documents, tokenizers, lengths, global_batch: int, batches: int,
                  progress=None) -> list[dict]:
  """One row per (tokenizer, length): batches of `global_batch` rows built by one process (a
  host's share is global_batch / hosts; one host here), timed after a first untimed batch."""
  rows = []
  for name in tokenizers:
    tokenizer = make_tokenizer(name)
    cache = token_cache.prepare(docs, tokenizer, f"{docs.data_dir}/lcx_cache", progress=False)
    meta = cache.meta
    unchecked = token_cache.TokenCache(cache.folder)  # no block checked yet
    start = time.perf_counter()
    unchecked.check()
    check_seconds = time.perf_counter() - start
    for length in lengths:
      if progress is not None:
        progress.set_postfix_str(f"data {name} L={length}")
      stream = PackedStream(docs, tokenizer, seq_len=length, global_batch=global_batch, seed=0,
                            progress=False)
      stream.batch(0)  # the epoch's order, computed once per epoch
      start = time.perf_counter()
      for step in range(1, batches + 1):
        stream.batch(step)
      seconds = (time.perf_counter() - start) / batches
      rows.append({
          "tokenizer": name, "length": length, "batch": global_batch,
          "seconds_per_batch": seconds, "tokens_per_second": global_batch * length / seconds,
          "corpus": docs.name, "cache_tokens": meta["tokens"],
          "bytes_per_token": meta["text_bytes"] / max(meta["tokens"], 1),
          "prepare_seconds": meta["seconds"], "prepare_seconds_per_gb": meta["seconds_per_gb"],
          # every checksum of the cache verified at once (a run checks each block on first read)
          "check_gb_per_second": meta["tokens"] * unchecked.itemsize / check_seconds / 1e9})
      if progress is not None:
        progress.update(1)
  return rows


def pipeline_table(rows: list[dict]) -> str:
  lines = ["| tokenizer | length | batch | ms per batch | tokens/s | bytes per token | "
           "first preparation s/GB | checksums checked GB/s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    lines.append(f"| {r['tokenizer']} | {r['length']} | {r['batch']} | "
                 f"{1e3 * r['seconds_per_batch']:.1f} | {r['tokens_per_second']:,.0f} | "
                 f"{r['bytes_per_token']:.2f} | {r['prepare_seconds_per_gb']:,.0f} | "
                 f"{r['check_gb_per_second']:.1f} |")
  return "\n".join(lines)
