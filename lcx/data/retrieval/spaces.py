"""The keys and values that needles are made of, in two disjoint halves: evaluation draws from
one and the training mixture from the other, so a model that retrieves at evaluation has learned
the skill rather than memorised answers. The half an item belongs to is a hash of its text, so
the split holds for any format and never needs a stored list."""
import zlib

import numpy as np

EVAL, TRAIN = "eval", "train"
SPACES = (EVAL, TRAIN)
DIGITS = 5  # values are 5-digit numbers, as in the passkey papers
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def space_of(item: str) -> str:
  """EVAL for a quarter of all items, TRAIN for the rest."""
  return EVAL if zlib.crc32(item.encode("utf-8")) % 4 == 0 else TRAIN


def _number(rng: np.random.Generator) -> str:
  return str(int(rng.integers(10 ** (DIGITS - 1), 10 ** DIGITS)))


def _word(rng: np.random.Generator) -> str:
  """A pronounceable 3-syllable word such as 'bamito': a key that is also a Python identifier."""
  return "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
                 for _ in range(3))


KINDS = {"number": _number, "word": _word}


def draw(rng: np.random.Generator, kind: str, space: str, n: int, avoid: str = "",
         taken: set[str] | None = None) -> list[str]:
  """n distinct items of `kind` from `space`, none occurring in the text `avoid` nor in `taken`
  (which gains them)."""
  if space not in SPACES:
    raise ValueError(f"retrieval space {space!r} is unknown; allowed: {', '.join(SPACES)}")
  taken = set() if taken is None else taken
  out = []
  while len(out) < n:
    item = KINDS[kind](rng)
    if item in taken or space_of(item) != space or item in avoid:
      continue
    taken.add(item)
    out.append(item)
  return out
