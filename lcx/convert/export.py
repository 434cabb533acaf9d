"""An lcx run written as an HF Llama directory: config.json, model.safetensors (float32) and the
tokenizer's files, which transformers.AutoModelForCausalLM.from_pretrained loads (and so
lm-evaluation-harness, vLLM, ...).

Only what HF's Llama computes the same way is written: RoPE (either pair layout: interleaved
pairs are reordered to half-split by permuting q/k rows, which leaves the logits unchanged; static
NTK as the base it amounts to) with no scaling, linear, dynamic NTK or YaRN; SwiGLU; no memory.
Anything else is refused in one line naming it. The byte tokenizer becomes a byte-level
tokenizer.json whose ids are lcx's (0-255 the bytes, then <pad> and <eos>).
"""
import json
import os
import pathlib
import shutil

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from lcx.convert.llama import Llama, Unsupported, from_lcx, to_hf_config, unpermute_rope_rows
from lcx.data.tokenizers import (BYTE_LEVEL_ALPHABET, HF, SENTENCEPIECE, ByteTokenizer,
                                 make_tokenizer)
from lcx.evaluate.loading import load_run
from lcx.positions.rope import ntk_base, rotary_dim
from lcx.runs.checkpoint import flat_arrays


def architecture(config) -> Llama:
  """The HF Llama a resolved run config describes; Unsupported for what HF's Llama cannot be."""
  m = config.model
  refused = [
      (m.position != "rope", f"model.position={m.position!r}: HF's Llama has RoPE only "
                             "(ALiBi, T5, KERPLE, FIRE, xPos, learned and NoPE have no HF Llama "
                             "form)"),
      (m.memory != "none", f"model.memory={m.memory!r}: a memory mechanism has no HF Llama form"),
      (m.mlp != "swiglu", f"model.mlp={m.mlp!r}: HF's Llama has a SwiGLU MLP"),
      (m.qk_norm, "model.qk_norm=True: HF's Llama does not normalize queries and keys"),
      (bool(m.get("position_layers")), f"model.position_layers={tuple(m.get('position_layers', ()))}"
       ": HF's Llama has one RoPE for every layer"),
  ]
  if m.position == "rope":
    r = m.rope
    refused += [
        (rotary_dim(m.head_dim, r.fraction) != m.head_dim,
         f"model.rope.fraction={r.fraction}: HF's Llama rotates whole heads"),
        (r.keep != 1.0, f"model.rope.keep={r.keep} (p-RoPE): HF's Llama has no such form"),
        (r.scaling == "yarn" and r.yarn_ramp != "dims",
         "model.rope.yarn_ramp='turns': HF's YaRN computes the 'dims' ramp"),
    ]
  for bad, what in refused:
    if bad:
      raise Unsupported(f"cannot export: {what}")
  r = m.rope
  base, scaling = r.base, {}
  if r.scaling == "ntk":  # static NTK is plain RoPE with a larger base
    base = ntk_base(r.base, r.factor, m.head_dim)
  elif r.scaling != "none":
    scaling = dict(scaling=r.scaling, factor=float(r.factor), original_length=int(r.original_length))
    if r.scaling == "yarn":
      scaling.update(beta_fast=float(r.beta_fast), beta_slow=float(r.beta_slow))
    if r.scaling == "longrope":
      scaling.update(short_factor=tuple(map(float, r.short_factor)),
                     long_factor=tuple(map(float, r.long_factor)),
                     attention_factor=float(r.attention_factor))
  return Llama(vocab_size=m.vocab_size, d_model=m.d_model, n_layers=m.n_layers,
               n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, head_dim=m.head_dim,
               mlp_dim=m.mlp_dim, norm_eps=float(m.norm_eps), rope_base=float(base),
               context=int(config.data.seq_len),
               # HF ties without a scale: lcx's scaled tied logits become an untied head
               tie_embeddings=bool(m.tie_embeddings) and _tied_scale(m) == 1.0,
               rope_scaling=scaling)


def _tied_scale(m) -> float:
  return float(m.tied_logit_scale or m.d_model ** -0.5)


def export_run(workdir, out_dir, overrides=()) -> dict:
  """Writes OUT from the run's latest checkpoint; returns what was written. The config overrides
  apply first (e.g. a RoPE scaling to export a zero-shot extension)."""
  out_dir = pathlib.Path(out_dir).expanduser().resolve()
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise Unsupported(f"--to {out_dir} already exists and is not empty; pass a new folder")
  run = load_run(workdir, overrides)
  config = run.config
  llama = architecture(config)
  params = {path: np.asarray(jax.device_get(leaf), np.float32)
            for path, leaf in flat_arrays(nnx.state(run.model, nnx.Param)).items()}
  if config.model.rope.layout == "interleaved":  # pairs (2i, 2i+1) -> (i, i + K/2)
    params = _to_half_split(params, llama)
  if config.model.tie_embeddings and not llama.tie_embeddings:
    params["head"] = params["embedding"].T * np.float32(_tied_scale(config.model))
  tensors = from_lcx(llama, params)
  staging = out_dir.parent / f".{out_dir.name}.exporting-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir(parents=True)
  try:
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    hf_config = to_hf_config(llama)
    hf_config["lcx_run"] = {"workdir": str(run.workdir), "step": run.step}
    tokenizer = _write_tokenizer(staging, config)
    hf_config.update(tokenizer)
    (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    (staging / "generation_config.json").write_text(json.dumps(
        {k: v for k, v in tokenizer.items() if k.endswith("token_id")}, indent=2) + "\n")
    if out_dir.exists():
      out_dir.rmdir()
    staging.rename(out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return {"directory": str(out_dir), "step": run.step, "tensors": len(tensors),
          "config": hf_config}


def _to_half_split(params: dict, llama: Llama) -> dict:
  """q/k projections with each head's output dims reordered from interleaved pairs to
  half-split ones (the same permutation llama.cpp's files undo)."""
  out = dict(params)
  for path, w in params.items():
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("wq", "wk"):
      D, heads, K = w.shape
      rows = w.reshape(D, heads * K).T  # [out, in], as HF and llama.cpp store them
      out[path] = unpermute_rope_rows(rows, heads).T.reshape(D, heads, K)
  return out


def _write_tokenizer(out: pathlib.Path, config) -> dict:
  """The tokenizer's files in OUT; returns the special token ids for config.json."""
  name = config.data.tokenizer
  if name.startswith(HF):
    source = pathlib.Path(name.removeprefix(HF))
    shutil.copyfile(source, out / "tokenizer.json")
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
      if (source.parent / extra).exists():
        shutil.copyfile(source.parent / extra, out / extra)
  elif name.startswith(SENTENCEPIECE):
    shutil.copyfile(pathlib.Path(name.removeprefix(SENTENCEPIECE)), out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False},
        indent=2) + "\n")
  else:
    _write_byte_tokenizer(out, config.data.seq_len)
  tokenizer = make_tokenizer(name, config.data.tokenizer_sha256)
  return {"eos_token_id": int(tokenizer.eos_id), "bos_token_id": int(tokenizer.eos_id)}


def _write_byte_tokenizer(out: pathlib.Path, context: int) -> None:
  """lcx's byte tokenizer as a tokenizer.json: each byte one token of its own id (the byte-level
  alphabet spells byte b as one character), then <pad> (256) and <eos> (257)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  vocab = {char: byte for char, byte in BYTE_LEVEL_ALPHABET.items()}
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens([AddedToken("<pad>", special=True, normalized=False),
                                AddedToken("<eos>", special=True, normalized=False)])
  assert tokenizer.token_to_id("<pad>") == ByteTokenizer.pad_id
  assert tokenizer.token_to_id("<eos>") == ByteTokenizer.eos_id
  tokenizer.save(str(out / "tokenizer.json"))
  (out / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "pad_token": "<pad>",
       "bos_token": "<eos>", "model_max_length": context, "clean_up_tokenization_spaces": False},
      indent=2) + "\n")
