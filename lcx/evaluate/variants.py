"""Perplexity of one run's parameters under variations of its model config (a RoPE table, a
temperature): what a search or a fit scores many times over the same windows."""
import dataclasses
import math

import numpy as np
from flax import nnx

from lcx.data.sources import Documents
from lcx.data.tokenizers import make_tokenizer
from lcx.evaluate import perplexity as ppl
from lcx.evaluate.loading import LoadedRun, load_run
from lcx.evaluate.scoring import Scorer
from lcx.model import ModelConfig, Transformer


class VariantPerplexity:
  """The run at RUN loaded once, and the same non-overlapping windows of `length` tokens of a
  split (up to `tokens` targets); calling it with changes to its ModelConfig gives their
  perplexity (each variant's model is rebuilt around the same parameters and compiled anew, as a
  changed option is part of the graph)."""

  def __init__(self, workdir, length: int, tokens: int, split: str = "validation",
               run: LoadedRun | None = None):
    self.run = run or load_run(workdir)
    c = self.run.config
    self.cfg: ModelConfig = self.run.model.cfg
    self.length = length
    tokenizer = make_tokenizer(c.data.tokenizer)
    docs = Documents(c.data.name, split, data_dir=c.data.data_dir, text_dir=c.data.text_dir,
                     text_glob=c.data.text_glob, text_key=c.data.text_key)
    segments = ppl.common_segments(ppl.document_tokens(docs, tokenizer), length, tokens)
    if not segments:
      raise ValueError(f"no document of the {split} split has {length + 1} tokens; score a "
                       "shorter length or another split")
    self.windows = np.concatenate([ppl.non_overlapping_windows(s, length) for s in segments])
    self.rules = tuple(map(tuple, c.mesh.rules))
    _, self.state = nnx.split(self.run.model)

  @property
  def tokens(self) -> int:
    return int(self.windows.shape[0] * self.length)

  def __call__(self, **changes) -> float:
    cfg = dataclasses.replace(self.cfg, **changes)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    scorer = Scorer(nnx.merge(graphdef, self.state), self.run.mesh, self.rules)
    return math.exp(float(np.mean(scorer.losses(self.windows), dtype=np.float64)))
