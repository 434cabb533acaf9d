"""Passkey retrieval: a 5-digit key hidden at a chosen depth of filler, asked for at the end.

Scored teacher-forced: a trial counts when the model's argmax is the right token at every digit
of the key given the prompt and the digits before it, which is exactly when greedy decoding would
produce the key. Two filler styles:
  prose   the prompt of the Position Interpolation / landmark-attention papers;
  python  for models trained on source code: the key assigned to a module-level variable early
          in a long module of real code from the evaluation split, asked for by an assert at the
          end.
"""
import dataclasses

import numpy as np

from lcx.data.tokenizers import Tokenizer

PROSE_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
               "memorize them. I will quiz you about the important information there.\n")
PROSE_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and "
                "back again. ")
PROSE_KEY = "The pass key is {key}. Remember it. {key} is the pass key. "
PROSE_QUESTION = "What is the pass key? The pass key is "

PYTHON_INTRO = '"""Settings and helpers."""\n'
PYTHON_KEY = "\n_PASSKEY = {key}\n"
PYTHON_QUESTION = "\n\nassert _PASSKEY == "

STYLES = ("prose", "python")


@dataclasses.dataclass
class Prompt:
  tokens: np.ndarray  # [EOS] + prompt + key digits: length + 1 tokens
  answer_start: int  # index of the first key token in tokens
  key_start: int  # index where the key sentence starts
  key: str


def _fit(filler: np.ndarray, n: int, offset: int) -> np.ndarray:
  """n tokens of filler starting at offset, repeating it as needed."""
  if n <= 0:
    return filler[:0]
  reps = -(-(offset + n) // len(filler))
  return np.tile(filler, reps)[offset: offset + n]


def _parts(tokenizer: Tokenizer, style: str, key: str):
  if style == "prose":
    return PROSE_INTRO, PROSE_KEY.format(key=key), PROSE_QUESTION
  if style == "python":
    return PYTHON_INTRO, PYTHON_KEY.format(key=key), PYTHON_QUESTION
  raise ValueError(f"passkey style {style!r} is unknown; allowed: {', '.join(STYLES)}")


def minimum_length(tokenizer: Tokenizer, style: str) -> int:
  """The shortest context that holds the prompt with no filler at all."""
  text = "".join(_parts(tokenizer, style, "12345")) + "12345"
  return len(tokenizer.encode(text))  # + 1 for the leading EOS, - 1 for the last target


def build_prompt(tokenizer: Tokenizer, style: str, length: int, depth: float, key: str,
                 filler: np.ndarray | None = None, filler_offset: int = 0) -> Prompt:
  """length + 1 tokens (the model reads `length`, the last key digit is only a target) with the
  key sentence after `depth` of the filler."""
  intro, key_text, question = _parts(tokenizer, style, key)
  if style == "prose":
    filler = tokenizer.encode(PROSE_FILLER)
  elif filler is None or not len(filler):
    raise ValueError("passkey style 'python' needs filler text from the evaluation split")
  head = np.concatenate([[tokenizer.eos_id], tokenizer.encode(intro)])
  key_tokens, question_tokens = tokenizer.encode(key_text), tokenizer.encode(question)
  answer = tokenizer.encode(key)
  room = length + 1 - len(head) - len(key_tokens) - len(question_tokens) - len(answer)
  if room < 0:
    raise ValueError(f"passkey length {length} is shorter than the prompt without filler "
                     f"({length - room} tokens)")
  before = int(round(depth * room))
  parts = [head, _fit(filler, before, filler_offset), key_tokens,
           _fit(filler, room - before, filler_offset + before), question_tokens, answer]
  tokens = np.concatenate(parts).astype(np.int32)
  return Prompt(tokens, answer_start=len(tokens) - len(answer), key_start=len(head) + before,
                key=key)


def passkey_grid(predict, tokenizer: Tokenizer, style: str, lengths, depths,
                 trials: int, seed: int = 0, filler: np.ndarray | None = None,
                 not_applicable: dict[int, str] | None = None, progress=None) -> dict:
  """Accuracy per (length, depth) cell over `trials` keys each, and the longest length at 100%.

  predict(windows (N, L + 1)) -> argmax predictions (N, L) of each next token. Lengths in
  not_applicable get None cells and their reason.
  """
  not_applicable = not_applicable or {}
  rng = np.random.default_rng(seed)
  accuracy = []
  for length in lengths:
    if length in not_applicable:
      accuracy.append([None] * len(depths))
      continue
    row = []
    for depth in depths:
      prompts = []
      for _ in range(trials):
        key = str(rng.integers(10000, 100000))
        offset = int(rng.integers(0, len(filler))) if filler is not None and len(filler) else 0
        prompts.append(build_prompt(tokenizer, style, length, depth, key, filler, offset))
      predictions = predict(np.stack([p.tokens for p in prompts]))
      correct = [np.array_equal(pred[p.answer_start - 1:], p.tokens[p.answer_start:])
                 for p, pred in zip(prompts, predictions)]
      row.append(float(np.mean(correct)))
      if progress is not None:
        progress(length)
    accuracy.append(row)
  perfect = [length for length, row in zip(lengths, accuracy) if all(a == 1.0 for a in row)]
  return {"style": style, "lengths": list(lengths), "depths": list(depths), "trials": trials,
          "accuracy": accuracy, "longest_at_100": max(perfect) if perfect else None,
          "not_applicable": {str(k): v for k, v in not_applicable.items()}}
