"""A small evaluation run every config.eval.every_steps during training, so a dashboard shows
extrapolation and retrieval developing: validation loss and perplexity at a few multiples of
seq_len, and a retrieval probe at seq_len."""
import numpy as np
from flax import nnx

from lcx import config as config_lib
from lcx.data import retrieval
from lcx.data.sources import Documents
from lcx.data.tokenizers import make_tokenizer
from lcx.evaluate import perplexity as ppl
from lcx.evaluate.scoring import DoesNotFit, Scorer
from lcx.model import Transformer

_PROBE_SEED = 1234  # the probe's trials are fixed for a run, so its curve is comparable over steps


class RetrievalProbe:
  """Fixed trials of each probe task and style at seq_len (validation text, evaluation keys and
  values, depths spread over [0, 1]), scored teacher-forced in one forward pass: a trial is exact
  when every answer token is the argmax given the true prefix, which is what greedy decoding
  produces (for an unordered answer, in the order written: a lower bound), and the answer loss is
  the mean per-token loss. Task/style pairs too long for seq_len are left out."""

  def __init__(self, tasks, styles, trials: int, seq_len: int, tokenizer, text, params):
    self.windows, self.answer_starts = {}, {}
    rng = np.random.default_rng(_PROBE_SEED)
    for task in tasks:
      for style in (s for s in styles if s in retrieval.styles_of(task)):
        if retrieval.minimum_length(tokenizer, task, style, params) > seq_len:
          continue
        haystack = retrieval.default_haystack(task, style, text, tokenizer)
        cell = [retrieval.build_trial(tokenizer, task, style, seq_len, depth, rng, haystack,
                                      params=params)
                for depth in np.linspace(0, 1, trials)]
        self.windows[task, style] = np.stack([np.concatenate([t.prompt, t.answer]) for t in cell])
        # each row's first answer target (answers differ in length: a bAbI place's name)
        self.answer_starts[task, style] = np.array([len(t.prompt) - 1 for t in cell])

  def __call__(self, scorer: Scorer) -> dict:
    record = {}
    for (task, style), windows in self.windows.items():
      losses, argmax = scorer.run(windows)
      answer = np.arange(losses.shape[1])[None] >= self.answer_starts[task, style][:, None]
      right = (argmax == windows[:, 1:]) | ~answer
      record[f"eval/retrieval/{task}/{style}/exact"] = float(right.all(axis=1).mean())
      record[f"eval/retrieval/{task}/{style}/answer_loss"] = float(losses[answer].mean())
    return record


class TrainingEval:
  """__call__(step, params) -> a record of eval/loss_xM and eval/perplexity_xM per multiple M,
  and the retrieval probe's eval/retrieval/<task>/<style>/{exact,answer_loss}."""

  def __init__(self, config, model_cfg, mesh, rules):
    c = config
    tokenizer = make_tokenizer(c.data.tokenizer)
    docs = Documents(c.data.name, "validation", data_dir=c.data.data_dir,
                     text_dir=c.data.text_dir, text_glob=c.data.text_glob, text_key=c.data.text_key)
    documents = ppl.document_tokens(docs, tokenizer)
    longest = max(len(d) for d in documents) - 1
    model = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
    self.lengths = {}
    for multiple in c.eval.multiples:
      length = int(multiple * c.data.seq_len)
      try:
        model.check_length(length)
      except ValueError:
        continue  # learned positions: nothing to measure past the table
      if length <= longest:
        self.lengths[multiple] = length
    self.segments = (ppl.common_segments(documents, max(self.lengths.values()), c.eval.max_tokens)
                     if self.lengths else [])
    self.probe = None
    if c.eval.probe_trials:
      text = retrieval.TextHaystack(np.concatenate([d[1:] for d in documents]))
      self.probe = RetrievalProbe(c.eval.probe_tasks, c.data.retrieval.styles, c.eval.probe_trials,
                                  c.data.seq_len, tokenizer, text, config_lib.retrieval_params(c))
    self.tokenizer = tokenizer
    self.scorer = Scorer(model, mesh, rules)

  def __call__(self, step: int, params) -> dict:
    self.scorer.params = params
    record = {"step": step}
    for multiple, length in self.lengths.items():
      try:
        result = ppl.evaluate_non_overlapping(self.scorer.losses, self.segments, length,
                                              self.tokenizer)
      except DoesNotFit:
        continue
      record[f"eval/loss_x{multiple:g}"] = result["loss"]
      record[f"eval/perplexity_x{multiple:g}"] = result["perplexity"]
    if self.probe is not None:
      record.update(self.probe(self.scorer))
    return record if len(record) > 1 else {}
