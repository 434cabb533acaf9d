"""The retrieval mixture: a fraction of training rows are retrieval documents made on the fly.

Row g of the stream is a retrieval row when a hash of (seed, g) falls under `fraction`, so the
stream stays a pure function of (seed, step): resume, any number of processes and any tokenizer
see the same rows. A retrieval row is packed with retrieval documents ([EOS] + prompt + answer)
of random lengths up to seq_len, each of a task and style drawn from those configured, its
needles at a uniform random depth, its haystack from the train split and its keys and values from
the training space (disjoint from evaluation's; lcx.data.retrieval.spaces). With document_mask each
document starts at position 0 in its own segment, as packed documents do. The answer tokens'
loss may weigh more (answer_weight): they are the few targets that need the far context, and
without the extra weight a small model's gradient is all haystack.
"""
import dataclasses

import ml_collections
import numpy as np

from lcx.data import retrieval
from lcx.data import token_cache
from lcx.data.tokenizers import Tokenizer

_SALT = 0x7E7A1  # separates the mixture's random streams from the packing's


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
  fraction: float = 0.0
  answer_weight: float = 1.0  # the loss weight of answer tokens (1: the plain language-model loss)
  tasks: tuple[str, ...] = retrieval.TASKS
  styles: tuple[str, ...] = retrieval.STYLES
  params: retrieval.TaskParams = retrieval.TaskParams()


def check(cfg: MixtureConfig, tokenizer: Tokenizer, seq_len: int) -> None:
  """One line naming what cannot work: an unknown task or style, a fraction outside [0, 1], or a
  task whose needles do not fit in seq_len."""
  if not 0 <= cfg.fraction <= 1:
    raise ValueError(f"data.retrieval.fraction={cfg.fraction!r} must be in [0, 1]")
  if not cfg.answer_weight > 0:
    raise ValueError(f"data.retrieval.answer_weight={cfg.answer_weight!r} must be positive")
  for field, given, allowed in (("tasks", cfg.tasks, retrieval.ALL_TASKS),
                                ("styles", cfg.styles, retrieval.STYLES)):
    if problem := retrieval.choice_problem(given, allowed):
      raise ValueError(f"data.retrieval.{field}={tuple(given)!r}: {problem}")
  for task in cfg.tasks:
    if not set(cfg.styles) & set(retrieval.styles_of(task)):
      raise ValueError(f"data.retrieval.tasks: {task} is written in "
                       f"{', '.join(retrieval.styles_of(task))}, none of data.retrieval.styles="
                       f"{tuple(cfg.styles)!r}; add one or drop the task")
  if cfg.fraction:
    for task, style in kinds(cfg):
      need = retrieval.minimum_length(tokenizer, task, style, cfg.params)
      if need > seq_len:
        raise ValueError(f"data.retrieval: {task} ({style}) needs {need} tokens, more than "
                         f"data.seq_len={seq_len}; drop it from data.retrieval.tasks/styles or "
                         "lengthen seq_len")


def kinds(cfg: MixtureConfig) -> list[tuple[str, str]]:
  """(task, style) of every document kind the mixture draws: each task in each of its styles
  that the config names."""
  return [(t, s) for t in cfg.tasks for s in cfg.styles if s in retrieval.styles_of(t)]


class RetrievalMixture:
  """takes(g): whether row g is a retrieval row; example(g): that row."""

  def __init__(self, cfg: MixtureConfig, docs, tokenizer: Tokenizer, *, seq_len: int, seed: int,
               document_mask: bool = True):
    check(cfg, tokenizer, seq_len)
    self.cfg, self.tokenizer = cfg, tokenizer
    self.seq_len, self.seed, self.document_mask = seq_len, seed, document_mask
    # the haystack is read from the split's token cache (the packed stream's too)
    self.haystack = retrieval.DocumentHaystack(
        docs, tokenizer, token_cache.prepare(docs, tokenizer, f"{docs.data_dir}/lcx_cache"))
    self.kinds = kinds(cfg)
    self.shortest = {k: retrieval.minimum_length(tokenizer, *k, cfg.params) for k in self.kinds}

  def takes(self, index: int) -> bool:
    if not self.cfg.fraction:
      return False
    return np.random.default_rng([self.seed, _SALT, index]).random() < self.cfg.fraction

  def example(self, index: int) -> dict[str, np.ndarray]:
    """Retrieval documents of random lengths back to back until the row is full; a remainder too
    short for any task is real text."""
    rng = np.random.default_rng([self.seed, _SALT, index, 1])
    pieces, positions, answers, room = [], [], [], self.seq_len + 1
    while room > 0:
      fits = [k for k in self.kinds if self.shortest[k] + 1 <= room]
      if not fits:
        pieces.append(self.haystack.take(rng, room))
        positions.append(np.arange(room))
        answers.append(np.zeros(room, bool))
        break
      task, style = fits[int(rng.integers(len(fits)))]
      # log-uniform: many short documents (dense answers, the needle close) and some long ones
      low, high = self.shortest[task, style], min(room - 1, self.seq_len)
      length = int(np.exp(rng.uniform(np.log(low), np.log(high + 1))))
      if room - (length + 1) <= min(self.shortest.values()):  # no document would fit after it
        length = room - 1
      hay = retrieval.default_haystack(task, style, self.haystack, self.tokenizer)
      trial = retrieval.build_trial(self.tokenizer, task, style, length, float(rng.random()), rng,
                                    hay, space=retrieval.TRAIN, params=self.cfg.params)
      pieces.append(np.concatenate([trial.prompt, trial.answer]))  # length + 1 tokens
      positions.append(np.arange(length + 1))
      answers.append(np.arange(length + 1) >= len(trial.prompt))
      room -= length + 1
    tokens = np.concatenate(pieces).astype(np.int32)
    if self.document_mask:
      pos = np.concatenate(positions).astype(np.int32)[:-1]
      seg = np.concatenate([np.full(len(p), i + 1) for i, p in enumerate(positions)])
      seg = seg.astype(np.int32)[:-1]
    else:
      pos = np.arange(self.seq_len, dtype=np.int32)
      seg = np.ones(self.seq_len, np.int32)
    weights = np.where(np.concatenate(answers)[1:], self.cfg.answer_weight, 1).astype(np.float32)
    return {"tokens": tokens[:-1], "targets": tokens[1:], "positions": pos, "segment_ids": seg,
            "weights": weights}


def default_retrieval() -> ml_collections.ConfigDict:
  """data.retrieval: the retrieval mixture (off at fraction 0) and the task sizes that training
  and evaluation share, with the mixture's and the tasks' defaults."""
  m, p = MixtureConfig(), retrieval.TaskParams()
  return ml_collections.ConfigDict(dict(
      fraction=m.fraction, answer_weight=m.answer_weight, tasks=m.tasks, styles=m.styles,
      num_keys=p.num_keys, num_values=p.num_values, num_queries=p.num_queries, num_hops=p.num_hops,
      story_facts=p.story_facts))


def fill_missing_data(d: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """fill_missing's part for config.data, in place (and returned)."""
  if "retrieval" not in d:
    d.retrieval = default_retrieval()
  if "answer_weight" not in d.retrieval:  # runs saved before answer weights: the plain loss
    d.retrieval.answer_weight = 1.0
  if "story_facts" not in d.retrieval:  # runs saved before the bAbI tasks
    d.retrieval.story_facts = retrieval.TaskParams.story_facts
  if "tokenizer_sha256" not in d:  # runs saved before subword tokenizers: bytes, nothing to hash
    d.tokenizer_sha256 = ""
  if "pose_target_len" not in d:  # runs saved before PoSE: positions as packed
    d.pose_target_len = 0
  return d
