"""LongPPL (Fang et al., ICLR 2025): perplexity over the key tokens only, those a long context
helps.

A target is a key token when the model's loss on it drops by more than `drop` nats when it sees
the whole window instead of only the last `window` tokens (the long-short difference), and its
loss with the whole window is below `ceiling` (it is predicted, not merely less wrong). Plain
perplexity is dominated by tokens any short context predicts; LongPPL reads only those that need
the long one. The paper's short context is 4K tokens for models pretrained at 4K and evaluated
to 32K, with drop 2 and ceiling 2 (nats): here the short window defaults to the model's own
pretraining length and the thresholds are the paper's, so a model evaluated at 1x has no key
tokens by definition, and at kx the key tokens are those that need more than 1x of context.

The key tokens are the evaluated model's own (the paper can also pick them with a stronger
model); the fraction of targets that are key tokens is reported beside LongPPL, since a model
that uses no long context has few.
"""
import dataclasses
import math

import numpy as np

from lcx.evaluate.perplexity import Losses, sliding_windows


@dataclasses.dataclass(frozen=True)
class LongPPL:
  window: int  # the short context, tokens
  drop: float = 2.0  # nats the loss must drop by with the whole window
  ceiling: float = 2.0  # nats the loss with the whole window must stay below
  # the short windows' stride: each target is scored with between window - stride and window
  # tokens of context; 0: window // 4
  stride: int = 0

  def __post_init__(self):
    if self.window < 1:
      raise ValueError(f"--longppl_window={self.window} must be a positive number of tokens")
    if self.drop <= 0 or self.ceiling <= 0:
      raise ValueError(f"--longppl_drop={self.drop} and --longppl_loss={self.ceiling} must be "
                       "positive (nats)")

  def short_losses(self, losses: Losses, windows: np.ndarray) -> np.ndarray:
    """(N, L) losses of each window's targets with at most `window` tokens of context (and at
    least window - stride): sliding short windows, scored in one call."""
    stride = self.stride or max(1, self.window // 4)
    pieces = [sliding_windows(row, self.window, min(stride, self.window)) for row in windows]
    scored = losses(np.concatenate([p for p, _ in pieces])).astype(np.float64)
    out, k = np.empty((len(windows), windows.shape[1] - 1)), 0
    for row, (parts, new) in enumerate(pieces):
      end = self.window  # the target after a part's last one
      for i, n in enumerate(new):
        end = self.window if i == 0 else end + n
        out[row, end - n:end] = scored[k, self.window - n:]
        k += 1
    return out

  def key_tokens(self, full: np.ndarray, short: np.ndarray) -> np.ndarray:
    """Which targets are key tokens, from their losses with the whole window and the short one."""
    return (short - full > self.drop) & (full < self.ceiling)

  def measure(self, losses: Losses, windows: np.ndarray, full: np.ndarray) -> dict:
    """LongPPL of windows (N, L + 1) whose targets' losses with the whole window are `full`."""
    key = self.key_tokens(full, self.short_losses(losses, windows))
    n = int(key.sum())
    loss = float(full[key].mean()) if n else None
    return {"longppl": math.exp(loss) if n else None, "key_loss": loss, "key_tokens": n,
            "key_fraction": n / full.size, "window": self.window, "drop": self.drop,
            "ceiling": self.ceiling}
