"""DroPE's test-time temperature (Gelberg et al. 2025): a model trained without position
encoding (configs/finetune.py:drope) scores longer sequences with its queries scaled by
1 + c ln(L / L_train). c is fitted as the paper does, on validation perplexity at a multiple of
the training length: each c of a grid scores the same windows, the best is kept.

The result (RUN/drope.json) holds c, the perplexity of every c tried, and the
`--config.model.temperature.*` overrides that apply it (model.temperature.kind=drope).
"""
import dataclasses
import json
import pathlib

import tqdm

from lcx.evaluate.loading import load_run
from lcx.evaluate.variants import VariantPerplexity
from lcx.files import write_atomic
from lcx.model.temperature import TemperatureOptions

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1


@dataclasses.dataclass(frozen=True)
class FitOptions:
  multiple: float = 2.0  # scored at this multiple of the training length
  grid: tuple[float, ...] = DEFAULT_GRID
  tokens: int = 16384
  split: str = "validation"

  def __post_init__(self):
    if not self.multiple > 1:
      raise ValueError(f"--multiple={self.multiple} must exceed 1 (the temperature is 1 up to "
                       "the training length)")
    if not self.grid or min(self.grid) < 0:
      raise ValueError(f"--grid={','.join(map(str, self.grid))}: values of c, all >= 0")
    if self.tokens < 1:
      raise ValueError(f"--tokens={self.tokens} must be positive")


def fit(workdir, options: FitOptions, progress: bool = True) -> tuple[dict, pathlib.Path]:
  """Fits c on RUN; returns (the result, the file it was written to)."""
  run = load_run(workdir)
  train_length = int(run.config.data.seq_len)
  temperature = run.model.cfg.temperature
  if temperature.kind not in ("none", "drope"):
    raise ValueError(f"{workdir} has model.temperature.kind={temperature.kind!r} of its own; "
                     "DroPE's fit is for a run without one")
  length = int(round(options.multiple * train_length))
  perplexity = VariantPerplexity(workdir, length, options.tokens, options.split, run=run)
  scores = {}
  for c in tqdm.tqdm(sorted(set(options.grid)), desc="drope c", unit="value",
                     disable=not progress):
    scores[c] = perplexity(temperature=TemperatureOptions(kind="drope", length=train_length,
                                                          drope_c=float(c)))
  best = min(scores, key=scores.get)
  result = {"run": str(workdir), "c": best, "length": length, "train_length": train_length,
            "split": options.split, "tokens": perplexity.tokens, "perplexity": scores[best],
            "perplexity_by_c": {str(c): v for c, v in scores.items()},
            "overrides": ["model.temperature.kind=drope", f"model.temperature.drope_c={best:g}"]}
  path = pathlib.Path(workdir).expanduser() / "drope.json"
  write_atomic(path, json.dumps(result, indent=2) + "\n")
  return result, path
