"""Train a SentencePiece tokenizer on a run config's corpus (how: lcx.tokenizer):

  python -m lcx.tokenizer train --config configs/pretrain.py:125m    # the preset's own tokenizer
  python -m lcx.tokenizer train --config configs/pretrain.py:tiny --vocab_size 1024 \
      --out PATH [--model_type bpe|unigram] [--documents 20000] [--seed 0] [--config.data.name=...]

--out and --vocab_size default to the path the config's data.tokenizer names (sentencepiece:PATH)
and its model.vocab_size.
Beside the model file, PATH.json records how it was made and the sha256 a run records. Then
train with `--config.data.tokenizer=sentencepiece:PATH`.
"""
import hashlib
import json
import os
import pathlib
import sys
import time

from absl import flags

from lcx import cli, overrides as overrides_lib
from lcx.data.sources import Documents
from lcx.data.tokenizers import SENTENCEPIECE, SentencePieceTokenizer
from lcx.tokenizer import bytes_per_token, train

_CONFIG = flags.DEFINE_string("config", "configs/pretrain.py:tiny",
                              "The run config whose corpus (data.*) the tokenizer learns.")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "Pieces in the model, bytes and specials "
                              "included; default the config's model.vocab_size, else 32000.")
_OUT = flags.DEFINE_string("out", None, "Where to write the model file; default the path the "
                           "config's data.tokenizer names (sentencepiece:PATH).")
_TYPE = flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "SentencePiece's algorithm.")
_DOCUMENTS = flags.DEFINE_integer("documents", 20000, "Documents of the train split to learn from "
                                  "(all of them when the split has fewer).")
_SEED = flags.DEFINE_integer("seed", 0, "Which documents are drawn.")
_THREADS = flags.DEFINE_integer("threads", 8, "Trainer threads (part of what makes the model "
                                "file reproducible).")
_FORCE = flags.DEFINE_bool("force", False, "Replace a model file already at --out.")


def main(argv, overrides) -> None:
  if argv[1:] != ["train"]:
    sys.exit(f"usage: python -m lcx.tokenizer train --config ... --vocab_size N --out PATH; got "
             f"{' '.join(argv[1:]) or 'no command'}")
  try:
    c = overrides_lib.load_config(_CONFIG.value, overrides)
  except ValueError as e:
    sys.exit(f"lcx.tokenizer: {e}")
  d = c.data
  named = d.tokenizer.removeprefix(SENTENCEPIECE) if d.tokenizer.startswith(SENTENCEPIECE) else ""
  if not (_OUT.value or named):
    sys.exit(f"--out is required: where to write the model file (the config's data.tokenizer is "
             f"{d.tokenizer!r}, not sentencepiece:PATH)")
  out = pathlib.Path(_OUT.value or named).expanduser().resolve()
  vocab_size = _VOCAB.value or c.model.vocab_size or 32000
  if out.exists() and not _FORCE.value:
    sys.exit(f"--out={out} exists; runs may have been trained with it (they record its hash). "
             "Choose another path, or pass --force to replace it")
  try:
    docs = Documents(d.name, "train", data_dir=d.data_dir, text_dir=d.text_dir,
                     text_glob=d.text_glob, text_key=d.text_key)
    start = time.perf_counter()
    proto = train(docs, vocab_size=vocab_size, model_type=_TYPE.value,
                  documents=_DOCUMENTS.value, seed=_SEED.value, threads=_THREADS.value)
  except (ValueError, OSError) as e:
    sys.exit(f"lcx.tokenizer: {cli.os_error(e) if isinstance(e, OSError) else e}")
  seconds = time.perf_counter() - start
  out.parent.mkdir(parents=True, exist_ok=True)
  temporary = out.with_name(out.name + ".partial")
  temporary.write_bytes(proto)
  os.replace(temporary, out)  # never a half-written model at --out
  tokenizer = SentencePieceTokenizer(str(out))
  validation = Documents(d.name, "validation", data_dir=d.data_dir, text_dir=d.text_dir,
                         text_glob=d.text_glob, text_key=d.text_key)
  record = {"corpus": docs.name, "split": "train", "text_key": d.text_key,
            "documents": int(min(_DOCUMENTS.value, len(docs))), "seed": _SEED.value,
            "vocab_size": vocab_size, "model_type": _TYPE.value, "threads": _THREADS.value,
            "sha256": hashlib.sha256(proto).hexdigest(), "train_seconds": round(seconds, 2),
            "validation_bytes_per_token": round(bytes_per_token(tokenizer, validation), 4)}
  out.with_name(out.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
  print(f"{out}: {vocab_size} pieces ({_TYPE.value}) from {record['documents']} documents of "
        f"{docs.name} in {seconds:.1f} s; {record['validation_bytes_per_token']:.2f} bytes per "
        f"token on validation")
  if named and pathlib.Path(named).expanduser().resolve() == out:
    print(f"{_CONFIG.value} names it (data.tokenizer): its runs and lcx.data.prepare use it")
  else:
    print(f"train with --config.data.tokenizer={SENTENCEPIECE}{out}")


if __name__ == "__main__":
  cli.quiet_library_logs()
  cli.run(main)
