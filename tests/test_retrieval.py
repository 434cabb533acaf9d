"""Retrieval tasks, their two scorings and the training mixture: generators checked for length,
depth, absent answers and determinism; scorings against predictors of known accuracy."""
import ml_collections
import numpy as np
import pytest

from lcx import config as config_lib
from lcx.data import retrieval
from lcx.data.mixture import MixtureConfig, RetrievalMixture, check
from lcx.data.sources import Documents
from lcx.data.stream import PackedStream
from lcx.data.tokenizers import ByteTokenizer
from lcx.evaluate.retrieval import by_distance, longest_at, needle_distance, score_trials
from lcx.data.retrieval import spaces

TOK = ByteTokenizer()
# Real-looking code: a line every 24 characters, so a needle can go anywhere within a line's reach.
TEXT = retrieval.TextHaystack(TOK.encode("".join(
    f"    value_{i:04d} = f({i:4d})\n" for i in range(3000))))
KINDS = [(t, s) for t in retrieval.TASKS for s in retrieval.STYLES]


def _trial(task, style, length=700, depth=0.5, seed=0, space=retrieval.EVAL):
  hay = retrieval.default_haystack(task, style, TEXT, TOK)
  return retrieval.build_trial(TOK, task, style, length, depth, np.random.default_rng(seed), hay,
                               space=space)


@pytest.mark.parametrize("task, style", KINDS)
def test_prompt_and_answer_fill_the_length_exactly_with_the_answer_only_in_needles(task, style):
  for length, depth in ((700, 0.0), (701, 0.37), (950, 1.0)):
    t = _trial(task, style, length, depth)
    assert len(t.prompt) + len(t.answer) == length + 1
    assert t.prompt[0] == TOK.eos_id and TOK.decode(t.answer) == t.answer_text
    text = TOK.decode(t.prompt[1:])
    for needle in t.needles:
      assert needle in text
      text = text.replace(needle, "", 1)
    for value in t.values:  # outside the needles, no answer occurs (the haystack is clean)
      assert value not in text
    assert spaces.space_of(t.values[0]) == spaces.EVAL


@pytest.mark.parametrize("task, style", [("passkey", "python"), ("niah_single", "prose"),
                                         ("niah_single", "python"), ("niah_multivalue", "python"),
                                         ("variable_tracking", "python")])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_the_needle_sits_at_the_requested_depth_on_a_boundary(task, style, depth):
  t = _trial(task, style, 1200, depth)
  intro = _trial(task, style, 1200, 0.0).needle_starts[0]  # [EOS] + the task's introduction
  room = 1200 - retrieval.minimum_length(TOK, task, style)  # the haystack's tokens
  before = t.needle_starts[0] - intro  # haystack tokens before the needle: it comes first
  assert abs(before - depth * room) <= 24  # the nearest line end (24 characters apart)
  preceding = TOK.decode(t.prompt[t.needle_starts[0] - 1:t.needle_starts[0]])
  assert before == 0 or preceding == "\n" or (style == "prose" and preceding == " ")


def test_trials_are_a_function_of_the_seed():
  for task, style in KINDS:
    a, b = _trial(task, style, seed=3), _trial(task, style, seed=3)
    assert np.array_equal(a.prompt, b.prompt) and a.values == b.values
    assert not np.array_equal(a.prompt, _trial(task, style, seed=4).prompt)


def test_multikey_asks_for_one_of_four_keys_and_ranks_it_against_the_others():
  t = _trial("niah_multikey", "python")
  assert len(t.needles) == 4 and len(t.values) == 1 and len(t.alternatives) == 9
  others = [n.split(" = ")[1].strip() for n in t.needles if t.values[0] not in n]
  alternatives = {TOK.decode(a).strip() for a in t.alternatives}
  assert set(others) <= alternatives and t.values[0] not in alternatives


def test_multivalue_is_accepted_in_any_order_and_multiquery_only_in_order():
  mv = _trial("niah_multivalue", "prose")
  assert len(mv.values) == 4 and mv.accepts(", ".join(reversed(mv.values)) + ".")
  assert not mv.accepts(", ".join(mv.values[:3]) + ".")
  mq = _trial("niah_multiquery", "python")
  assert len(mq.values) == 2 and mq.accepts(mq.answer_text)
  assert not mq.accepts(", ".join(reversed(mq.values)) + ")\n")


def test_variable_tracking_chain_keeps_its_order_after_the_depth():
  t = _trial("variable_tracking", "python", 900, 0.3)
  names = [n.split(" = ")[0] for n in t.needles]
  text = TOK.decode(t.prompt)
  assert t.needles[0] == f"{names[0]} = {t.values[0]}\n"
  assert [n.split(" = ")[1].strip() for n in t.needles[1:]] == names[:-1]
  assert text.endswith(f"assert {names[-1]} == ")


class NoDigits:
  """A tokenizer without digits (they decode to '?'): it cannot write a retrieval answer."""
  name, vocab_size, eos_id = "no-digits", 258, 257

  def encode(self, text):
    return TOK.encode(text)

  def decode(self, ids):
    return "".join("?" if ch.isdigit() else ch for ch in TOK.decode(ids))


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="needle"), "task 'needle' is unknown; allowed: passkey, niah_single"),
    (dict(style="java"), "style 'java' is unknown; allowed: prose, python"),
    (dict(depth=1.5), r"depth 1.5 is outside \[0, 1\]"),
    (dict(length=100, task="niah_multikey", style="prose"),
     "length 100 is too short for niah_multikey \\(prose\\): .* take 227 tokens"),
])
def test_bad_requests_fail_with_one_line(kwargs, message):
  args = dict(task="niah_single", style="python", length=700, depth=0.5) | kwargs
  with pytest.raises(ValueError, match=message):
    _trial(**args)


def test_a_tokenizer_that_cannot_write_the_answer_is_refused():
  with pytest.raises(ValueError, match="no-digits tokenizer cannot encode the passkey needle"):
    retrieval.build_trial(NoDigits(), "passkey", "python", 500, 0.5, np.random.default_rng(0),
                          TEXT)


class Oracle:
  """A predictor that knows every answer and gives it for the trials in `right` only (for the
  others it changes the first digit): its accuracy is known exactly. An unordered answer it
  gives in another order, so only decoding, not teacher forcing, finds it right."""

  def __init__(self, trials, right):
    self.answers = {t.prompt.tobytes(): (t, i in right) for i, t in enumerate(trials)}

  def greedy(self, prompts, steps):
    out = []
    for p in prompts:
      t, right = self.answers[p.tobytes()]
      text = t.answer_text
      if not t.ordered:
        text = ", ".join(reversed(t.values)) + t.close
      answer = np.array(TOK.encode(text), np.int32)
      if not right:
        answer[0] = ord("0") if answer[0] != ord("0") else ord("1")
      out.append(answer[:steps])
    return np.stack(out)

  def answer_scores(self, prompts, answers, mask):
    scores = np.zeros(answers.shape[:2], np.float32)
    forced = np.zeros(answers.shape[:2], bool)
    for r, p in enumerate(prompts):  # the prompt's rest comes before each answer, unmasked
      tail = answers[r, 0, :int(np.argmax(mask[r, 0]))]
      t, right = self.answers[np.concatenate([p, tail]).astype(p.dtype).tobytes()]
      scores[r, 0 if right else 1] = 1.0
      forced[r, 0] = right and t.ordered
    return scores, forced


@pytest.mark.parametrize("task, style", [("passkey", "prose"), ("niah_multivalue", "python"),
                                         ("niah_multiquery", "prose"), ("babi_qa1", "python")])
def test_both_scorings_measure_a_predictor_of_known_accuracy(task, style):
  trials = [_trial(task, style, 600 + 7 * (i % 3), seed=i) for i in range(12)]
  right = {0, 2, 3, 7, 11}
  exact, ranked = score_trials(Oracle(trials, right), TOK, trials)
  assert [i for i, ok in enumerate(exact) if ok] == sorted(right)
  assert [i for i, ok in enumerate(ranked) if ok] == sorted(right)


def test_longest_length_at_ninety_percent():
  assert longest_at([100, 200, 400], [[1, 1], [0.9, 0.9], [0.5, 1]], 0.9) == 200
  assert longest_at([100, 200], [[None, None], [0.5, 0.5]], 0.9) is None


def test_needle_distance_counts_segments_from_the_prompt_start_to_the_question():
  """The distance a memory must reach: the segment of the prompt's last token (the one that
  predicts the answer) minus the farthest needed needle's, segments cut from position 0."""
  for depth in (0.0, 0.5, 1.0):
    t = _trial("passkey", "python", length=700, depth=depth)
    end, last = min(t.needle_ends), len(t.prompt) - 1
    assert TOK.decode(t.prompt[t.needle_starts[0]:end]) == t.needles[0]  # where the needle is
    assert needle_distance(t, 64) == last // 64 - (end - 1) // 64
    assert needle_distance(t, 10_000) == 0  # one segment holds it all
  assert needle_distance(_trial("passkey", "python", depth=0.0), 64) >= 9  # 700 tokens: 10 segments
  assert needle_distance(_trial("passkey", "python", depth=1.0), 64) <= 1
  # a task that needs several needles is as far as its farthest one
  t = _trial("niah_multivalue", "python", depth=0.5)
  assert needle_distance(t, 64) == (len(t.prompt) - 1) // 64 - (min(t.needle_ends) - 1) // 64
  pooled = by_distance([_trial("passkey", "python", depth=d) for d in (0.0, 0.0, 1.0)],
                       [True, False, True], [True, True, True], 64)
  far, near = (str(needle_distance(_trial("passkey", "python", depth=d), 64)) for d in (0.0, 1.0))
  assert pooled["unit"] == 64
  assert pooled["distances"][far] == {"exact": 0.5, "ranked": 1.0, "trials": 2}
  assert pooled["distances"][near] == {"exact": 1.0, "ranked": 1.0, "trials": 1}


@pytest.fixture(scope="module")
def train_docs(data_dir):
  return Documents("pystdlib", "train", data_dir=data_dir)


def _mixture(docs, **kwargs):
  cfg = MixtureConfig(fraction=kwargs.pop("fraction", 0.5),
                      tasks=kwargs.pop("tasks", ("passkey", "niah_single", "niah_multikey")))
  return RetrievalMixture(cfg, docs, TOK, seq_len=kwargs.pop("seq_len", 400), seed=7, **kwargs)


def test_the_mixture_is_a_pure_function_of_seed_and_row_across_processes(train_docs):
  def stream(mixture, **kw):
    return PackedStream(train_docs, TOK, seq_len=400, global_batch=8, seed=7, mixture=mixture,
                        **kw)
  one = stream(_mixture(train_docs)).batch(5)
  again = stream(_mixture(train_docs)).batch(5)  # a resumed run builds its stream anew
  halves = [stream(_mixture(train_docs), process_index=i, process_count=2).batch(5)
            for i in range(2)]
  for key in one:
    np.testing.assert_array_equal(one[key], again[key])
    np.testing.assert_array_equal(one[key], np.concatenate([h[key] for h in halves]))
  plain = stream(None).batch(5)
  mixture = _mixture(train_docs)
  takes = [mixture.takes(5 * 8 + r) for r in range(8)]
  assert any(takes) and not all(takes)
  for r, took in enumerate(takes):  # rows it does not take are the plain stream's
    assert np.array_equal(one["tokens"][r], plain["tokens"][r]) != took


def test_mixture_rows_are_packed_retrieval_documents_from_the_training_space(train_docs):
  mixture = _mixture(train_docs, fraction=1.0)
  for index in range(20):
    row = mixture.example(index)
    tokens = np.concatenate([row["tokens"], row["targets"][-1:]])
    starts = np.flatnonzero(row["positions"] == 0)
    assert row["tokens"].shape == (400,) and starts[0] == 0
    for a, b in zip(starts, list(starts[1:]) + [400]):  # each document is [EOS] + prompt + answer
      assert tokens[a] == TOK.eos_id or b == 400 and a == starts[-1]
      assert len(set(row["segment_ids"][a:b])) == 1
    text = TOK.decode(tokens)
    answers = [line.split("== ")[-1] for line in text.split("\n") if "assert" in line]
    answers += [s.split(" is ")[-1] for s in text.split("\n") if s.startswith("What is")]
    for answer in answers:
      digits = "".join(ch for ch in answer if ch.isdigit())[:5]
      if len(digits) == 5:
        assert spaces.space_of(digits) == spaces.TRAIN
  assert 0.3 < np.mean([_mixture(train_docs).takes(i) for i in range(400)]) < 0.7


def test_mixture_rows_weigh_their_answers_and_nothing_else(train_docs):
  cfg = MixtureConfig(fraction=1.0, answer_weight=7.0, tasks=("niah_single", "passkey"),
                      styles=("python",))
  mixture = RetrievalMixture(cfg, train_docs, TOK, seq_len=400, seed=3)
  for index in range(10):
    row = mixture.example(index)
    weighted = row["weights"] == 7.0
    assert set(np.unique(row["weights"])) <= {1.0, 7.0} and weighted.sum() >= 6
    documents = np.flatnonzero(row["positions"] == 0)
    # every answer is 5 digits and a newline, right before the next document's [EOS]
    answers = TOK.decode(row["targets"][weighted]).split("\n")[:-1]
    assert all(len(a) == 5 and a.isdigit() for a in answers)
    assert len(answers) >= len(documents) - 1
  plain = PackedStream(train_docs, TOK, seq_len=400, global_batch=2, seed=3).example(0)
  assert np.all(plain["weights"] == 1.0)


@pytest.mark.parametrize("cfg, message", [
    (MixtureConfig(fraction=1.5), r"data.retrieval.fraction=1.5 must be in \[0, 1\]"),
    (MixtureConfig(fraction=0.5, answer_weight=0.0),
     "data.retrieval.answer_weight=0.0 must be positive"),
    (MixtureConfig(fraction=0.5, tasks=("needles",)), "needles is not allowed; allowed: passkey"),
    (MixtureConfig(fraction=0.5, tasks=("niah_multikey",)),
     r"niah_multikey \(prose\) needs 227 tokens, more than data.seq_len=128"),
])
def test_mixture_config_errors_name_the_field(cfg, message):
  with pytest.raises(ValueError, match=message):
    check(cfg, TOK, 128)


def test_the_config_refuses_a_mixture_that_cannot_fit_and_fills_it_in_for_old_runs(tiny_config):
  tiny_config.data.retrieval.fraction = 0.5
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.data.retrieval: passkey \(prose\) needs \d+ tokens, more than "
                           r"data.seq_len=32"):
    config_lib.resolve(tiny_config, 8)
  old = tiny_config.to_dict()
  del old["data"]["retrieval"]  # a run saved before the mixture existed
  resolved = config_lib.resolve(ml_collections.ConfigDict(old), 8)
  assert resolved.data.retrieval.fraction == 0.0
  assert config_lib.retrieval_params(resolved) == retrieval.TaskParams()
