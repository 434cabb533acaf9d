"""Pretraining presets: `--config configs/pretrain.py:tiny` (CPU, bytes, the bundled corpus) or
`:125m` / `:350m` (accelerators: pg19 in 32,000 SentencePiece tokens, lengths in tokens).

Every field can be overridden on the command line as `--config.a.b=value`. The accelerator
presets need pg19 prepared and their tokenizer trained once (README, "Pod-scale studies"):
  python -m lcx.data.prepare --config configs/pretrain.py:125m
  python -m lcx.tokenizer train --config configs/pretrain.py:125m
  python -m lcx.data.prepare --config configs/pretrain.py:125m   # the token caches
"""
import ml_collections

from lcx import config as config_lib

# Accelerator sizes: model, seq_len (tokens), steps, learning rate, warmup. With the 32,000-piece
# vocabulary (tied embeddings) the totals are 124M and 341M parameters.
_ACCELERATOR = {
    "125m": (dict(d_model=768, n_layers=12, n_heads=12, mlp_dim=2560), 1024, 20000, 6e-4, 1000),
    "350m": (dict(d_model=1024, n_layers=24, n_heads=16, mlp_dim=2816), 2048, 40000, 3e-4, 2000),
}
# The accelerator presets' corpus and tokenizer: a 32,000-piece BPE model trained on pg19's train
# split (python -m lcx.tokenizer train --config configs/pretrain.py:125m writes it here).
PG19 = dict(name="pg19", text_key="book_text")
SUBWORD_VOCAB = 32000
SUBWORD_TOKENIZER = f"sentencepiece:~/.cache/lcx/tokenizers/pg19-bpe-{SUBWORD_VOCAB}.model"


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A run directory to take parameters from (a fine-tune; see configs/finetune.py): its
  # architecture is kept, with this config's seq_len, RoPE scaling and training settings.
  c.init_from = ""
  c.init_optimizer = False  # with init_from: also continue its AdamW moments (the schedule restarts)
  # with init_from: model fields this fine-tune sets itself instead of taking the source run's
  # (DroPE: position, position_layers, qk_norm); parameters the source lacks start fresh
  c.finetune_changes = ()
  # Resuming a workdir whose saved config has another architecture or data: refuse (list the
  # differences) or allow (continue with the changes; the old config is kept beside the new).
  c.resume_changes = "refuse"

  # The model's fields and their defaults (the tiny model) come from its dataclasses,
  # lcx.model.ModelConfig and each scheme's Options (lcx.positions.RopeOptions, ...), which say
  # what each one does: d_model, n_layers, n_heads, head_dim (0: d_model // n_heads), mlp_dim,
  # mlp, tie_embeddings, qk_norm, position,
  # max_len (learned-table size; 0: data.seq_len), attention (auto: the fastest kernel that
  # takes the scheme here), attention_block, remat, scan_layers, dtypes; vocab_size (0: the
  # tokenizer's, padded to a multiple of vocab_multiple so it shards evenly). model.rope: base,
  # fraction, layout, scaling (context extension: none, linear (PI), ntk, dynamic_ntk, yarn) with
  # factor s and original_length (0: data.seq_len, or the source run's for a fine-tune), YaRN's
  # beta_fast, beta_slow and yarn_ramp.
  c.model = config_lib.model_defaults()

  c.data = ml_collections.ConfigDict(dict(
      name="pystdlib", text_dir="", text_glob="**/*", data_dir="~/.cache/lcx/tensorflow_datasets",
      # "" (not given): bytes, or for a fine-tune (init_from) the tokenizer of the run it starts
      # from; or byte, sentencepiece:PATH, or hf:PATH (a tokenizer.json)
      text_key="text", tokenizer="", seq_len=128, batch_size=16, document_mask=True,
      # set when the config is resolved: the hash of a tokenizer file, which a resumed
      # run, a fine-tune and an evaluation find unchanged or refuse
      tokenizer_sha256="",
      # PoSE (a fine-tune's positions stretched to this length by a random skip per row; 0: off)
      pose_target_len=0,
  ))
  # A fraction of training rows made retrieval documents (lcx.data.mixture; 0: plain
  # pretraining), the tasks and styles drawn from, and the task sizes training and evaluation share.
  c.data.retrieval = config_lib.default_retrieval()

  # schedule, min_lr_ratio, weight_decay, b1, b2, grad_clip: lcx.optimizer.OptimizerConfig's.
  c.train = ml_collections.ConfigDict(dict(
      steps=300, log_every=10, learning_rate=3e-3, warmup_steps=30,
      **config_lib.optimizer_defaults(), grad_accum_steps=1,
      peak_flops=0.0,  # FLOP/s of the whole mesh for MFU; 0 measures a matmul at start
  ))

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=3))

  # Validation perplexity at multiples of seq_len during training (every_steps 0: off), and a
  # retrieval probe at seq_len: probe_trials trials of each probe task in each of
  # data.retrieval.styles (0: no probe). The full evaluation is `python -m lcx.evaluate`.
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=0, multiples=(1, 2, 4), max_tokens=4096,
      probe_tasks=("passkey", "niah_multikey"), probe_trials=16))

  # context > 1 shards each sequence over that many devices (context parallelism, README); the
  # keys reach the queries by all-gather ("gather") or passed device to device ("ring": the
  # keys of two devices held at a time instead of the whole sequence's)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, context=1, tensor=1,
                                          context_exchange="gather"))
  # Logical axis name -> mesh axes. Parameters and activations name their axes logically;
  # this table alone decides how they are laid out on the mesh.
  c.mesh.rules = (
      ("batch", ("data", "fsdp")),
      ("length", "context"),
      ("embed", "fsdp"),
      ("vocab", "tensor"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("mlp", "tensor"),
  )

  c.wandb = ml_collections.ConfigDict(dict(
      mode="auto",  # auto: online with an API key, offline without; or online/offline/disabled
      project="lcx", entity="", name="", group="", job_type="pretrain", tags=(),
      # an online run whose server has not answered by then logs offline (`wandb sync` later)
      init_timeout_s=config_lib.WANDB_INIT_TIMEOUT_S,
  ))

  if arg in _ACCELERATOR:
    model, seq_len, steps, learning_rate, warmup_steps = _ACCELERATOR[arg]
    c.model.update(compute_dtype="bfloat16", vocab_size=SUBWORD_VOCAB, **model)
    c.data.update(seq_len=seq_len, batch_size=256, tokenizer=SUBWORD_TOKENIZER, **PG19)
    c.train.update(steps=steps, learning_rate=learning_rate, warmup_steps=warmup_steps,
                   log_every=50)
    c.checkpoint.every_steps = 1000
  elif arg != "tiny":
    raise ValueError(f"configs/pretrain.py: unknown preset {arg!r}; allowed: tiny, "
                     f"{', '.join(_ACCELERATOR)}")
  c.lock()
  return c
