"""Prepare a run config's corpus in data.data_dir, once, before training on it:

  python -m lcx.data.prepare --config configs/pretrain.py:125m    # pg19, the preset's tokenizer
  python -m lcx.data.prepare --config configs/pretrain.py:tiny --config.data.name=jsonl \
      --config.data.text_dir=DIR [--config.data.tokenizer=sentencepiece:PATH] [--splits ...]

1. the dataset: a TFDS dataset by name (pg19, scientific_papers/arxiv, ...) downloaded and
   written as array_record, or a local one built from files (pystdlib, text_dir, jsonl);
2. the token cache of each split for the config's tokenizer (lcx.data.token_cache), which the
   packed stream and the retrieval mixture read; a SentencePiece tokenizer not trained yet (it
   learns from this dataset) is named with the command that trains it, to run before this again.
A training run does both on first use; doing them here first keeps a pod's hosts from waiting on
the slowest one, and says what the preparation cost (seconds per GB of text).
"""
import pathlib
import sys
import time

import tensorflow_datasets as tfds
from absl import flags

from lcx import cli, overrides as overrides_lib
from lcx.data import sources, token_cache
from lcx.data.tokenizers import SENTENCEPIECE, make_tokenizer

_CONFIG = flags.DEFINE_string("config", "configs/pretrain.py:tiny", "The run config whose data.* "
                              "names the corpus, its data_dir and the tokenizer.")
_SPLITS = flags.DEFINE_list("splits", ["train", "validation"], "Splits to tokenize.")


_PACKAGES = {"tensorflow": "tensorflow-cpu"}
_PG19_FILES = ("; or copy the books (gcloud storage cp -r gs://deepmind-gutenberg/train "
               "gs://deepmind-gutenberg/validation gs://deepmind-gutenberg/test DIR) and use "
               "--config.data.name=text_dir --config.data.text_dir=DIR --config.data.text_key=text "
               "(its train, validation and test folders give pg19's own splits)")


def prepare_dataset(d) -> None:
  """Download and write a TFDS dataset as array_record, or build a local one from its files."""
  if d.name in sources.LOCAL:  # built (every split at once) the first time it is opened
    sources.Documents(d.name, "train", data_dir=d.data_dir, text_dir=d.text_dir,
                      text_glob=d.text_glob, text_key=d.text_key)
    return
  try:
    builder = tfds.builder(d.name, data_dir=str(sources.resolved(d.data_dir)),
                           file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"data.name={d.name!r} is neither a bundled corpus "
                     f"({', '.join(sources.LOCAL)}) nor a TFDS dataset: "
                     f"{str(e).splitlines()[0]}") from None
  try:
    sources.build(builder)
  except ImportError as e:  # pg19's builder reads its Google Cloud Storage bucket through TensorFlow
    raise ValueError(
        f"TFDS's {d.name} builder needs the module {e.name!r} to download the dataset, and lcx "
        f"does not otherwise need it: install it for this preparation (pip install "
        f"{_PACKAGES.get(e.name, e.name)}) and run this again"
        + (_PG19_FILES if d.name == "pg19" else "")) from None


def _flags(overrides) -> list[str]:
  return [f"--config.{o}" for o in overrides]


def main(argv, overrides) -> None:
  if len(argv) > 1:
    sys.exit(f"lcx.data.prepare: unexpected arguments {argv[1:]}")
  try:
    d = overrides_lib.load_config(_CONFIG.value, overrides).data
    start = time.perf_counter()
    prepare_dataset(d)
    print(f"{d.name}: the dataset is prepared in {sources.resolved(d.data_dir)} "
          f"({time.perf_counter() - start:.0f} s)")
    model_file = d.tokenizer.removeprefix(SENTENCEPIECE)
    if d.tokenizer.startswith(SENTENCEPIECE) and not pathlib.Path(model_file).expanduser().exists():
      # the tokenizer is learned from this very dataset: it comes next, then the token caches
      print(f"the tokenizer {d.tokenizer} does not exist yet: train it with\n"
            f"  python -m lcx.tokenizer train --config {_CONFIG.value} {' '.join(_flags(overrides))}"
            f"\nthen run this command again to tokenize the splits")
      return
    tokenizer = make_tokenizer(d.tokenizer)
    for split in _SPLITS.value:
      docs = sources.Documents(d.name, split, data_dir=d.data_dir, text_dir=d.text_dir,
                               text_glob=d.text_glob, text_key=d.text_key)
      cache = token_cache.prepare(docs, tokenizer, f"{docs.data_dir}/lcx_cache")
      m = cache.meta
      print(f"{docs.name}/{split}: {m['documents']:,} documents, {m['tokens']:,} tokens "
            f"({d.tokenizer or tokenizer.name}), {m['text_bytes'] / 1e9:.3f} GB of text; tokenized in "
            f"{m['seconds']:.0f} s ({m['seconds_per_gb']:,.0f} s per GB) into {cache.folder}")
  except ValueError as e:
    sys.exit(f"lcx.data.prepare: {e}")
  except OSError as e:
    sys.exit(f"lcx.data.prepare: {cli.os_error(e)}")


if __name__ == "__main__":
  cli.quiet_library_logs()
  cli.run(main)
