"""Fine-tuning presets: continue a pretraining run at a longer length.

  python -m lcx.train --config configs/finetune.py:yarn --config.init_from=runs/rope \
      --workdir runs/rope-yarn

`get_config("METHOD[,PRESET]")`: METHOD is the RoPE scaling (none, linear, ntk, dynamic_ntk,
yarn), or drope (DroPE: no position encoding from here on, at the same length; see _drope);
PRESET (default tiny) is the pretraining preset whose length is multiplied by 4. The
architecture comes from the run in init_from; this config sets the new length, the scaling and
a short constant-rate schedule.
"""
import ml_collections

from configs import pretrain

LENGTH_FACTOR = 4


# DroPE continues its source for this share of the source's training (the paper: the last 12.5%).
DROPE_SHARE = 0.125


def get_config(arg: str = "yarn") -> ml_collections.ConfigDict:
  method, _, preset = arg.partition(",")
  if method == "drope":
    return _drope(preset or "tiny")
  c = pretrain.get_config(preset or "tiny")
  c.unlock()
  c.model.rope.update(scaling=method, factor=float(LENGTH_FACTOR) if method != "none" else 1.0)
  c.data.seq_len *= LENGTH_FACTOR
  c.data.batch_size = max(c.data.batch_size // LENGTH_FACTOR, 8)  # about the same tokens a step
  c.data.tokenizer = ""  # the tokenizer of the run in init_from, whatever the preset's
  tiny = (preset or "tiny") == "tiny"
  c.train.update(steps=200 if tiny else 1000, schedule="constant", warmup_steps=20 if tiny else 100,
                 learning_rate=1e-3 if tiny else 3e-5, log_every=10 if tiny else 50)
  c.checkpoint.every_steps = 100 if tiny else 500
  c.wandb.job_type = "finetune"
  c.lock()
  return c


def _drope(preset: str) -> ml_collections.ConfigDict:
  """DroPE (Gelberg et al. 2025): a RoPE run continued at its own length with no position
  encoding in any layer and QK-norm added (its scales start at 1, the usual init: the source had
  none to copy), for DROPE_SHARE of the preset's pretraining steps; evaluated with the
  temperature 1 + c ln(L / L_train), c fitted by python -m lcx.drope fit."""
  c = pretrain.get_config(preset)
  c.unlock()
  c.model.update(position="none", position_layers=(), qk_norm=True)
  c.finetune_changes = ("position", "position_layers", "qk_norm")
  c.data.tokenizer = ""  # the tokenizer of the run in init_from, whatever the preset's
  steps = max(int(c.train.steps * DROPE_SHARE), 1)
  c.train.update(steps=steps, schedule="constant", warmup_steps=max(steps // 10, 1),
                 learning_rate=c.train.learning_rate * c.train.min_lr_ratio or 1e-4,
                 log_every=max(min(c.train.log_every, steps // 10), 1))
  c.checkpoint.every_steps = steps
  c.wandb.job_type = "finetune"
  c.lock()
  return c
