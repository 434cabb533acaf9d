"""A small length sweep run every config.eval.every_steps during training, so a dashboard shows
extrapolation developing: validation loss and perplexity at a few multiples of seq_len."""
from flax import nnx

from lcx.data.sources import Documents
from lcx.data.tokenizers import make_tokenizer
from lcx.evaluate import perplexity as ppl
from lcx.evaluate.scoring import DoesNotFit, Scorer
from lcx.model import Transformer


class TrainingEval:
  """__call__(step, params) -> a record of eval/loss_xM and eval/perplexity_xM per multiple M."""

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
        model.position.check_length(length)
      except ValueError:
        continue  # learned positions: nothing to measure past the table
      if length <= longest:
        self.lengths[multiple] = length
    self.segments = (ppl.common_segments(documents, max(self.lengths.values()), c.eval.max_tokens)
                     if self.lengths else [])
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
    return record if len(record) > 1 else {}

