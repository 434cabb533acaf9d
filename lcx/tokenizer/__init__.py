"""Training SentencePiece tokenizers on a corpus (the command line: `python -m lcx.tokenizer`).

A sample of documents of the train split (drawn with a seed) is cut into lines and given to
SentencePiece's trainer with byte fallback on (every text encodes, none to <unk>), no
normalization and no dummy prefix (decode(encode(text)) == text, byte for byte, so bits per byte
count the corpus's own bytes). The same documents, settings and threads give the same file.
"""
import io
import re

import numpy as np

# Bytes (byte fallback) plus <unk> and </s>: the smallest vocabulary that can hold any text.
MIN_VOCAB = 256 + 2
# SentencePiece skips longer "sentences"; lines are cut to this many characters first.
_MAX_LINE = 8192


def sample(docs, documents: int, seed: int) -> np.ndarray:
  """Indices of the documents to learn from, sorted: a pure function of (len, documents, seed)."""
  n = len(docs)
  if documents >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, documents, replace=False))


def lines(docs, indices):
  """Each document's lines, newline kept, cut to _MAX_LINE characters."""
  for i in indices:
    for line in docs[int(i)].decode("utf-8", errors="replace").splitlines(keepends=True):
      for start in range(0, len(line), _MAX_LINE):
        yield line[start:start + _MAX_LINE]


def train(docs, *, vocab_size: int, model_type: str, documents: int, seed: int,
          threads: int) -> bytes:
  """The serialized model trained on a sample of `docs`."""
  import sentencepiece  # only this command and subword runs need it
  if vocab_size < MIN_VOCAB:
    raise ValueError(f"--vocab_size={vocab_size} cannot hold the 256 bytes and the <unk> and "
                     f"</s> pieces; use at least {MIN_VOCAB}")
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines(docs, sample(docs, documents, seed)), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_digits=True, max_sentence_length=4 * _MAX_LINE,
        shuffle_input_sentence=False, input_sentence_size=0, num_threads=threads,
        unk_id=0, eos_id=1, bos_id=-1, pad_id=-1, minloglevel=2)
  except RuntimeError as e:
    raise _vocabulary_error(str(e), vocab_size, documents) or e from None
  return model.getvalue()


def _vocabulary_error(message: str, vocab_size: int, documents: int) -> ValueError | None:
  """SentencePiece's refusal of a vocabulary size, saying which way it is wrong and what works."""
  small = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
  if small:  # every character seen needs a piece of its own, besides the bytes and specials
    return ValueError(f"--vocab_size={vocab_size} is too small: the {documents} documents drawn "
                      f"hold characters that with the 256 bytes and the <unk> and </s> pieces need "
                      f"{small[1]} pieces; use --vocab_size of at least {small[1]}, or fewer "
                      "--documents (fewer distinct characters)")
  large = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)",
                    message)
  if large:
    return ValueError(f"--vocab_size={vocab_size} is more pieces than {documents} documents of this "
                      f"corpus hold; use --vocab_size of at most {large[1]}, or more --documents")
  return None


def bytes_per_token(tokenizer, docs, count: int = 200) -> float:
  """How many UTF-8 bytes one token holds on average, over the first `count` documents."""
  ids = [tokenizer.encode(docs[i]) for i in range(min(count, len(docs)))]
  return sum(tokenizer.byte_length(x) for x in ids) / max(1, sum(len(x) for x in ids))
