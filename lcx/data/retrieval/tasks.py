"""Retrieval tasks in the manner of RULER (Hsieh et al., 2024), generated from a corpus's own text.

A trial is a prompt of real text (the haystack) with needles inserted at sentence or line
boundaries, a question at the end, and the answer that should follow it:

  passkey            a 5-digit pass key; prose: the passkey papers' prompt and filler; python: a
                     module-level constant in real source code, asked for by an assert
  niah_single        one needle "key -> value", asked for by its key
  niah_multikey      K needles with distinct keys, one asked for (the others are distractors)
  niah_multivalue    one key with V values, all of them asked for (in any order)
  niah_multiquery    K needles, Q of them asked for (in the order asked)
  variable_tracking  a chain A = 12345, B = A, C = B, ... (`num_hops` links) scattered after the
                     depth; asked for the value of the last name
  babi_qa1-qa5, qa7 bAbI's reasoning tasks, BABILong-style (lcx.data.retrieval.babi): a story of
                     `story_facts` facts in order, its first supporting fact at the depth, the
                     facts before it before the depth and the rest after it

The needles the answer needs sit at the requested depth (the nearest boundary to depth x the
haystack), distractor needles at random boundaries, the links of a chain at random boundaries
after its first needle, in order. Prompt and answer together are exactly length + 1 tokens, so
the model reads `length` tokens when it predicts the answer's last token. Keys and values come
from the space asked for (lcx.data.retrieval.spaces) and never occur in the haystack.
"""
import dataclasses

import numpy as np

from lcx.data.tokenizers import Tokenizer
from lcx.data.retrieval import babi
from lcx.data.retrieval import haystack as haystacks
from lcx.data.retrieval import spaces

# RULER's synthetic tasks: the suite's default
TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
         "variable_tracking")
BABI_TASKS = babi.TASKS
ALL_TASKS = TASKS + BABI_TASKS
STYLES = ("prose", "python")


def styles_of(task: str) -> tuple[str, ...]:
  """The styles a task is written in (every style, but only where bAbI reads naturally)."""
  return babi.STYLES.get(task, STYLES)

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                 "memorize them. I will quiz you about the important information there.\n")
PASSKEY_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and "
                  "back again. ")


@dataclasses.dataclass(frozen=True)
class TaskParams:
  num_keys: int = 4  # niah_multikey, niah_multiquery: needles with distinct keys
  num_values: int = 4  # niah_multivalue: values of the one key
  num_queries: int = 2  # niah_multiquery: keys asked for
  num_hops: int = 2  # variable_tracking: links after the first assignment
  distractors: int = 9  # likelihood ranking: wrong answers of the same form (chance 1 in 10)
  story_facts: int = 6  # bAbI tasks: the facts of a story, the supporting ones among them

  def __post_init__(self):
    for name in ("num_keys", "num_values", "num_queries", "num_hops", "distractors",
                 "story_facts"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"retrieval.{name}={value!r} must be a positive integer")
    if self.num_queries > self.num_keys:
      raise ValueError(f"retrieval.num_queries={self.num_queries} must not exceed "
                       f"retrieval.num_keys={self.num_keys}")


@dataclasses.dataclass(frozen=True)
class Trial:
  task: str
  style: str
  length: int
  depth: float
  prompt: np.ndarray  # [EOS] + text with needles + question
  answer: np.ndarray  # the answer's tokens, its closing mark included
  answer_text: str
  values: tuple[str, ...]  # what the answer must hold
  ordered: bool  # False: the values may come in any order
  close: str  # the mark that ends the answer
  alternatives: tuple[np.ndarray, ...]  # wrong answers of the same form, for likelihood ranking
  needle_starts: tuple[int, ...]  # prompt indices of the needles the answer needs
  needle_ends: tuple[int, ...]  # and where each of them ends (exclusive)
  needles: tuple[str, ...]  # every needle's text, in the order they appear

  def accepts(self, text: str) -> bool:
    """Whether a generated answer is right: the same text, or for an unordered answer the same
    values in another order."""
    if self.ordered or not text.endswith(self.close):
      return text == self.answer_text
    return sorted(text[:len(text) - len(self.close)].split(", ")) == sorted(self.values)


@dataclasses.dataclass
class _Needle:
  text: str
  # "answer" (at the depth), "before" (before it, in order), "chain" (after it, in order),
  # "support" (a chain needle the answer needs), "distractor" (anywhere)
  role: str


# needles the answer needs (the trial records where they are)
_NEEDED = ("answer", "support")
# at one boundary: needles before the depth's first, then the answer's, then the rest
_RANK = {"before": 0, "answer": 1}


@dataclasses.dataclass
class _Pieces:
  head: str
  needles: list[_Needle]
  question: str
  values: list[str]
  ordered: bool
  open: str
  close: str
  others: list[str]  # values in the prompt that are not the answer: the first distractors
  items: list[str]  # every key and value, none of which may occur in the haystack
  fresh: str = "number"  # the kind of the answer's further wrong answers (babi.fresh's kinds)

  def render(self, values) -> str:
    return self.open + ", ".join(values) + self.close


def _names(keys: list[str]) -> str:
  return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def _story_pieces(task: str, style: str, rng, space: str, p: TaskParams, avoid: str) -> _Pieces:
  """A bAbI story's facts as needles: those before its first supporting fact before the depth,
  that one at it, the rest (the other supporting ones among them) after it, all in order."""
  story = babi.story(task, style, rng, space, p.story_facts, avoid)
  first = story.support[0]
  roles = ["before" if i < first else "answer" if i == first else
           "support" if i in story.support else "chain" for i in range(len(story.facts))]
  return _Pieces("", [_Needle(text, role) for text, role in zip(story.facts, roles)],
                 story.question, [story.answer], True, "", story.close, list(story.others),
                 list(story.people), fresh=story.kind)


def _pieces(task: str, style: str, rng, space: str, p: TaskParams, avoid: str) -> _Pieces:
  if task in BABI_TASKS:
    return _story_pieces(task, style, rng, space, p, avoid)
  prose = style == "prose"
  taken: set[str] = set()
  numbers = lambda n: spaces.draw(rng, "number", space, n, avoid, taken)
  words = lambda n: spaces.draw(rng, "word", space, n, avoid, taken)
  if task == "passkey":
    [key] = numbers(1)
    if prose:
      needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
      return _Pieces(PASSKEY_INTRO, [_Needle(needle, "answer")],
                     "\nWhat is the pass key? The pass key is ", [key], True, "", ".", [], [key])
    return _Pieces('"""Settings and helpers."""\n', [_Needle(f"_PASSKEY = {key}\n", "answer")],
                   "\nassert _PASSKEY == ", [key], True, "", "\n", [], [key])
  if task == "variable_tracking":
    names, [value] = words(p.num_hops + 1), numbers(1)
    if prose:
      links = [f"VAR {b} = VAR {a}. " for a, b in zip(names, names[1:])]
      first, question = f"VAR {names[0]} = {value}. ", (
          f"\nWhat is the value of VAR {names[-1]}? The value of VAR {names[-1]} is ")
    else:
      links = [f"{b} = {a}\n" for a, b in zip(names, names[1:])]
      first, question = f"{names[0]} = {value}\n", f"\nassert {names[-1]} == "
    needles = [_Needle(first, "answer")] + [_Needle(t, "chain") for t in links]
    close = "." if prose else "\n"
    return _Pieces("", needles, question, [value], True, "", close, [], names + [value])

  n_keys, n_values, n_queries = {
      "niah_single": (1, 1, 1), "niah_multikey": (p.num_keys, 1, 1),
      "niah_multivalue": (1, p.num_values, 1),
      "niah_multiquery": (p.num_keys, 1, p.num_queries)}[task]
  keys = words(n_keys)
  values = [numbers(n_values) for _ in keys]
  asked = sorted(rng.choice(n_keys, n_queries, replace=False).tolist())
  rng.shuffle(asked)  # the order asked is random too
  queried = [keys[i] for i in asked]
  answer = [v for i in asked for v in values[i]]
  others = [v for i in range(n_keys) if i not in asked for v in values[i]]
  needles = []  # the ones asked for first, in the order asked: they go to the depth so
  for i in asked + [i for i in range(n_keys) if i not in asked]:
    for value in values[i]:
      if prose:
        text = f"The magic number for {keys[i]} is {value}. "
      elif n_values > 1:
        text = f"{keys[i]}.add({value})\n"
      else:
        text = f"{keys[i]} = {value}\n"
      needles.append(_Needle(text, "answer" if i in asked else "distractor"))
  many = n_values > 1 or n_queries > 1
  if prose:
    noun = "magic numbers" if many else "magic number"
    verb = "are" if many else "is"
    what = "all the magic numbers" if n_values > 1 else f"the {noun}"
    question = (f"\nWhat {verb} {what} for {_names(queried)}? The {noun} for {_names(queried)} "
                f"{verb} ")
    open_, close = "", "."
  elif n_values > 1:
    question, open_, close = f"\nassert {queried[0]} == {{", "", "}\n"
  elif n_queries > 1:
    question, open_, close = f"\nassert ({', '.join(queried)}) == (", "", ")\n"
  else:
    question, open_, close = f"\nassert {queried[0]} == ", "", "\n"
  items = keys + [v for vs in values for v in vs]
  return _Pieces("", needles, question, answer, n_values == 1, open_, close, others, items)


def choice_problem(given, allowed) -> str | None:
  """What is wrong with a list of task or style names, or None."""
  bad = [x for x in given if x not in allowed]
  if bad or not given:
    return f"{', '.join(bad) or 'none given'} is not allowed; allowed: {', '.join(allowed)}"
  return None


def _check(task: str, style: str, length: int, depth: float) -> None:
  if task not in ALL_TASKS:
    raise ValueError(f"retrieval task {task!r} is unknown; allowed: {', '.join(ALL_TASKS)}")
  if style not in STYLES:
    raise ValueError(f"retrieval style {style!r} is unknown; allowed: {', '.join(STYLES)}")
  if style not in styles_of(task):
    raise ValueError(f"retrieval style {style!r} is not one of {task}'s; allowed: "
                     f"{', '.join(styles_of(task))}")
  if not 0 <= depth <= 1:
    raise ValueError(f"retrieval depth {depth!r} is outside [0, 1] (0: the start of the text, "
                     "1: its end)")
  if isinstance(length, bool) or not isinstance(length, int) or length < 1:
    raise ValueError(f"retrieval length {length!r} must be a positive integer")


def _encode_exactly(tokenizer: Tokenizer, text: str, what: str) -> np.ndarray:
  ids = tokenizer.encode(text)
  if tokenizer.decode(ids) != text:
    raise ValueError(f"the {tokenizer.name} tokenizer cannot encode the {what} {text!r} exactly "
                     "(it decodes to something else)")
  return np.asarray(ids, np.int32)


def _fixed_tokens(tokenizer, pieces: _Pieces, task: str) -> tuple[list, int]:
  """The encoded head, needles, question and answer, and how many tokens they take with EOS."""
  parts = [_encode_exactly(tokenizer, pieces.head, f"{task} introduction"),
           [_encode_exactly(tokenizer, n.text, f"{task} needle") for n in pieces.needles],
           _encode_exactly(tokenizer, pieces.question, f"{task} question"),
           _encode_exactly(tokenizer, pieces.render(pieces.values), f"{task} answer")]
  used = 1 + len(parts[0]) + sum(len(t) for t in parts[1]) + len(parts[2]) + len(parts[3])
  return parts, used


# A bAbI story's length varies with its draw: its minimum length is the longest of this many (a
# trial whose story does not fit draws another).
_STORY_DRAWS = 16


def minimum_length(tokenizer: Tokenizer, task: str, style: str,
                   params: TaskParams = TaskParams()) -> int:
  """The shortest length that holds the task's needles, question and answer with no haystack."""
  _check(task, style, 1, 0.0)
  draws = _STORY_DRAWS if task in BABI_TASKS else 1
  rng = np.random.default_rng(0)
  return max(_fixed_tokens(tokenizer, _pieces(task, style, rng, spaces.EVAL, params, ""),
                           task)[1] for _ in range(draws)) - 1



def default_haystack(task: str, style: str, text: haystacks.TextHaystack, tokenizer: Tokenizer):
  """The haystack a task uses: the passkey papers' filler for prose passkey, else real text."""
  if task == "passkey" and style == "prose":
    return haystacks.NoiseHaystack(tokenizer, PASSKEY_FILLER)
  return text


def build_trial(tokenizer: Tokenizer, task: str, style: str, length: int, depth: float,
                rng: np.random.Generator, haystack, *, space: str = spaces.EVAL,
                params: TaskParams = TaskParams()) -> Trial:
  """One trial of `task` in `style`: prompt + answer are exactly length + 1 tokens."""
  _check(task, style, length, depth)
  pieces = _pieces(task, style, rng, space, params, "")
  for attempt in range(100):  # redraw keys and values until none occurs in the haystack
    parts, used = _fixed_tokens(tokenizer, pieces, task)
    room = length + 1 - used
    if room < 0 and task in BABI_TASKS and attempt < 99:  # a shorter story may fit
      pieces = _pieces(task, style, rng, space, params, "")
      continue
    if room < 0:
      raise ValueError(f"length {length} is too short for {task} ({style}): its needles, question "
                       f"and answer take {used - 1} tokens with no text around them")
    hay = haystack.take(rng, room)
    hay_text = tokenizer.decode(hay)
    if not any(item in hay_text for item in pieces.items):
      break
    pieces = _pieces(task, style, rng, space, params, hay_text)
  else:
    raise ValueError(f"could not draw {task} keys and values absent from the haystack")
  head, needle_tokens, question, answer = parts
  kind = "sentence" if style == "prose" else "line"
  points = haystacks.boundaries(hay, tokenizer, kind)
  at_depth = haystacks.nearest(points, depth * room)
  count = lambda *roles: sum(n.role in roles for n in pieces.needles)
  links = sorted(int(rng.choice(points[points >= at_depth]))
                 for _ in range(count("chain", "support")))
  earlier = sorted(int(rng.choice(points[points <= at_depth])) for _ in range(count("before")))
  where = [at_depth if n.role == "answer" else links.pop(0) if n.role in ("chain", "support")
           else earlier.pop(0) if n.role == "before" else int(rng.choice(points))
           for n in pieces.needles]
  # At one boundary the needles before the depth come first, then those the answer needs, the
  # rest in their own order.
  order = sorted(range(len(where)),
                 key=lambda i: (where[i], _RANK.get(pieces.needles[i].role, 2), i))
  texts = tuple(pieces.needles[i].text for i in order)
  out, starts, ends, cursor = [np.array([tokenizer.eos_id], np.int32), head], [], [], 0
  offset = 1 + len(head)
  for i in order:
    out.append(hay[cursor:where[i]])
    offset += where[i] - cursor
    if pieces.needles[i].role in _NEEDED:
      starts.append(offset)
      ends.append(offset + len(needle_tokens[i]))
    out.append(needle_tokens[i])
    offset += len(needle_tokens[i])
    cursor = where[i]
  out += [hay[cursor:], question]
  prompt = np.concatenate(out).astype(np.int32)
  alternatives = _alternatives(tokenizer, pieces, rng, space, params, tokenizer.decode(prompt))
  return Trial(task, style, length, float(depth), prompt, answer,
               pieces.render(pieces.values), tuple(pieces.values), pieces.ordered, pieces.close,
               alternatives, tuple(starts), tuple(ends), texts)


def _alternatives(tokenizer, pieces: _Pieces, rng, space, params: TaskParams,
                  prompt_text: str) -> tuple[np.ndarray, ...]:
  """Wrong answers of the answer's form: the prompt's other values first (the hardest to tell
  apart), then fresh values that occur nowhere in the prompt."""
  n = len(pieces.values)
  pool = list(pieces.others)
  rng.shuffle(pool)
  wanted, taken = params.distractors * n, set(pieces.values) | set(pool)
  more = max(0, wanted - len(pool))
  fresh = (spaces.draw(rng, "number", space, more, prompt_text, taken)
           if pieces.fresh == "number" else babi.fresh(pieces.fresh, rng, space, more,
                                                       prompt_text, taken))
  pool = (pool + fresh)[:wanted]
  return tuple(tokenizer.encode(pieces.render(pool[i * n:(i + 1) * n])).astype(np.int32)
               for i in range(params.distractors))
