"""bAbI's tasks, BABILong-style: every answer is what the facts imply (the test's own reading of
them, replayed in the order the prompt gives them), the supporting facts alone imply it too, the
first of them sits at the requested depth, and evaluation's and training's entities never
meet."""
import re

import numpy as np
import pytest

from lcx.data import retrieval
from lcx.data.mixture import MixtureConfig, check
from lcx.data.retrieval import babi, spaces
from lcx.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
# sentences that also end lines, every 32 characters: boundaries for both styles
TEXT = retrieval.TextHaystack(TOK.encode("".join(
    f"Record {i:05d} was filed today.\n" for i in range(3000))))
KINDS = [(t, s) for t in retrieval.BABI_TASKS for s in retrieval.styles_of(t)]
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


class Replay:
  """The facts read one by one, as a reader of bAbI would: where people are, who holds what,
  where things were left and have been, who gave what to whom, which place lies which way."""

  def __init__(self):
    self.at, self.holder, self.left, self.trail = {}, {}, {}, {}
    self.gives, self.relations = [], []

  def place_of(self, thing):
    holder = self.holder.get(thing)
    return self.at.get(holder) if holder else self.left.get(thing)

  def _note(self, thing):
    place = self.place_of(thing)
    trail = self.trail.setdefault(thing, [])
    if place and (not trail or trail[-1] != place):
      trail.append(place)

  def read(self, fact: str):
    fact = fact.strip()
    if m := re.fullmatch(r'(\w+) (?:went|moved|travelled|journeyed) to the (\w+)\.|'
                         r'(\w+)\.location = "(\w+)"', fact):
      person, place = (m[1], m[2]) if m[1] else (m[3], m[4])
      self.at[person] = place
      for thing in [t for t, h in self.holder.items() if h == person]:
        self._note(thing)
    elif m := re.fullmatch(r'(\w+) (?:picked up|got|grabbed|took) the (\w+)\.|'
                           r'(\w+)\.take\("(\w+)"\)', fact):
      person, thing = (m[1], m[2]) if m[1] else (m[3], m[4])
      self.holder[thing] = person
      self._note(thing)
    elif m := re.fullmatch(r'(\w+) (?:dropped|put down|discarded|left) the (\w+)\.|'
                           r'(\w+)\.drop\("(\w+)"\)', fact):
      person, thing = (m[1], m[2]) if m[1] else (m[3], m[4])
      self.holder.pop(thing, None)
      if person in self.at:
        self.left[thing] = self.at[person]
    elif m := re.fullmatch(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.", fact):
      self.gives.append((m[1], m[2], m[3]))
      self.holder[m[2]] = m[3]
    elif m := re.fullmatch(r"The (\w+) is (\w+) of the (\w+)\.", fact):
      self.relations += [(m[1], m[2], m[3]), (m[3], OPPOSITE[m[2]], m[1])]
    else:
      raise AssertionError(f"not a fact: {fact!r}")

  def answer(self, question: str) -> str:
    if m := re.search(r'Where is the (\w+)\?|assert location_of\("(\w+)"\) ==', question):
      return self.place_of(m[1] or m[2])
    if m := re.search(r"Where is (\w+)\?|assert (\w+)\.location ==", question):
      return self.at[m[1] or m[2]]
    if m := re.search(r"Where was the (\w+) before the (\w+)\?", question):
      trail = self.trail[m[1]]
      return trail[len(trail) - 1 - trail[::-1].index(m[2]) - 1]
    if m := re.search(r"What is (\w+) of the (\w+)\?", question):
      [x] = {x for x, way, y in self.relations if (way, y) == (m[1], m[2])}
      return x
    if m := re.search(r"What is the (\w+) (\w+) of\?", question):
      [y] = {y for x, way, y in self.relations if (x, way) == (m[1], m[2])}
      return y
    if m := re.search(r"Who gave the (\w+) to (\w+)\?", question):
      return [g for g, t, r in self.gives if (t, r) == (m[1], m[2])][-1]
    if m := re.search(r"Who did (\w+) give the (\w+) to\?", question):
      return [r for g, t, r in self.gives if (g, t) == (m[1], m[2])][-1]
    if m := re.search(r"What did (\w+) give to (\w+)\?", question):
      return [t for g, t, r in self.gives if (g, r) == (m[1], m[2])][-1]
    if m := re.search(r"How many things is (\w+) carrying\?", question):
      return ("none", "one", "two", "three", "four")[list(self.holder.values()).count(m[1])]
    raise AssertionError(f"not a question: {question!r}")


def _trial(task, style, length=900, depth=0.5, seed=0, space=retrieval.EVAL):
  return retrieval.build_trial(TOK, task, style, length, depth, np.random.default_rng(seed), TEXT,
                               space=space)


def _question(trial) -> str:
  return re.search(r"\n[^\n]*$", TOK.decode(trial.prompt)).group(0)


def _replayed(facts, question) -> str:
  replay = Replay()
  for fact in facts:
    replay.read(fact)
  return replay.answer(question)


@pytest.mark.parametrize("task, style", KINDS)
def test_the_answer_is_what_the_facts_imply_and_the_supporting_facts_alone_imply_it(task, style):
  for seed in range(12):
    t = _trial(task, style, depth=seed / 11, seed=seed)
    assert len(t.prompt) + len(t.answer) == 901
    question = _question(t)
    assert _replayed(t.needles, question) == t.values[0], (t.needles, question)
    supporting = [TOK.decode(t.prompt[s:e]) for s, e in zip(t.needle_starts, t.needle_ends)]
    assert len(supporting) == (babi.SUPPORT[task] or len(supporting)) >= 1
    assert _replayed(supporting, question) == t.values[0], (supporting, question)
    assert t.answer_text == t.values[0] + ('"\n' if style == "python" else ".")


@pytest.mark.parametrize("task, style", [("babi_qa1", "python"), ("babi_qa2", "prose"),
                                         ("babi_qa3", "prose")])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.7, 1.0])
def test_the_first_supporting_fact_sits_at_the_depth_the_others_in_order_around_it(task, style,
                                                                                 depth):
  t = _trial(task, style, 1500, depth, seed=int(depth * 10))
  text = TOK.decode(t.prompt[1:])  # after [EOS]; bytes: a character per token
  starts, cursor = [], 0
  for needle in t.needles:  # every fact where it is, in the order they happen
    cursor = text.index(needle, cursor)
    starts.append(1 + cursor)
    cursor += len(needle)
  first = starts.index(t.needle_starts[0])
  facts_before = sum(len(n) for n in t.needles[:first])
  room = len(t.prompt) - 1 - sum(map(len, t.needles)) - len(_question(t))  # the haystack
  assert abs(t.needle_starts[0] - 1 - facts_before - depth * room) <= 32  # a line apart
  assert set(t.needle_starts) <= set(starts[first:])  # the other supporting facts after it


def test_evaluation_and_training_never_share_an_entity():
  for kind in ("place", "thing"):
    assert not set(babi.entities(kind, spaces.EVAL)) & set(babi.entities(kind, spaces.TRAIN))
    assert len(babi.entities(kind, spaces.EVAL)) >= 10  # enough for 9 wrong answers
  for space in (spaces.EVAL, spaces.TRAIN):
    for task, style in KINDS:
      t = _trial(task, style, space=space, seed=5)
      text = " ".join(t.needles)
      names = {w for n in t.needles  # a python fact's first word, a prose one's capitals
               for w in re.findall(r"^[a-z]{6}(?=\.)|\b[A-Z][a-z]{5}\b", n)}
      assert (names or task == "babi_qa4")  # (places alone)
      assert all(spaces.space_of(n.lower()) == space for n in names)
      mentioned = {w for w in re.findall(r"[a-z]+", text)}
      for kind in ("place", "thing"):
        other = spaces.TRAIN if space == spaces.EVAL else spaces.EVAL
        assert not mentioned & set(babi.entities(kind, other)), (space, task, text)


@pytest.mark.parametrize("task", retrieval.BABI_TASKS)
def test_the_wrong_answers_are_other_entities_of_the_answers_kind(task):
  t = _trial(task, "prose", seed=2)
  wrong = [TOK.decode(a).removesuffix(".") for a in t.alternatives]
  assert len(wrong) == 9 and len(set(wrong)) == 9 and t.values[0] not in wrong
  if t.values[0] in babi.COUNTS:  # counts: the other nine
    assert set(wrong) == set(babi.COUNTS) - {t.values[0]}
    return
  kind = next(k for k in ("place", "thing") if t.values[0] in babi.entities(k, spaces.EVAL)) if (
      t.values[0].islower()) else "person"
  if kind == "person":
    assert all(w[0].isupper() and spaces.space_of(w.lower()) == spaces.EVAL for w in wrong)
  else:
    assert set(wrong) <= set(babi.entities(kind, spaces.EVAL))


def test_tasks_refuse_a_style_they_are_not_written_in():
  with pytest.raises(ValueError, match="retrieval style 'python' is not one of babi_qa3's; "
                                       "allowed: prose"):
    _trial("babi_qa3", "python")
  tokenizer = ByteTokenizer()
  with pytest.raises(ValueError, match="babi_qa4 is written in prose, none of "
                                       r"data.retrieval.styles=\('python',\)"):
    check(MixtureConfig(tasks=("babi_qa4",), styles=("python",)), tokenizer, 1024)
  with pytest.raises(ValueError, match=r"babi_qa2 \(prose\) needs \d+ tokens, more than "
                                       r"data.seq_len=128"):
    check(MixtureConfig(fraction=0.5, tasks=("babi_qa2",), styles=("prose",)), tokenizer, 128)
  with pytest.raises(ValueError, match="story_facts=2 is too few for babi_qa3"):
    retrieval.build_trial(TOK, "babi_qa3", "prose", 900, 0.5, np.random.default_rng(0), TEXT,
                          params=retrieval.TaskParams(story_facts=2))
  with pytest.raises(ValueError, match="story_facts=13 is too many for babi_qa4.*at most 12"):
    retrieval.build_trial(TOK, "babi_qa4", "prose", 900, 0.5, np.random.default_rng(0), TEXT,
                          params=retrieval.TaskParams(story_facts=13))
