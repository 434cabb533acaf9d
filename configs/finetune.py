"""Fine-tuning presets: continue a pretraining run at a longer length.

  python -m lcx.train --config configs/finetune.py:yarn --config.init_from=runs/rope \
      --workdir runs/rope-yarn

`get_config("METHOD[,PRESET]")`: METHOD is the RoPE scaling (none, linear, ntk, dynamic_ntk,
yarn); PRESET (default tiny) is the pretraining preset whose length is multiplied by 4. The
architecture comes from the run in init_from; this config sets the new length, the scaling and
a short constant-rate schedule.
"""
import ml_collections

from configs import pretrain

LENGTH_FACTOR = 4


def get_config(arg: str = "yarn") -> ml_collections.ConfigDict:
  method, _, preset = arg.partition(",")
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
