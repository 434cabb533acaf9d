"""A llama-architecture GGUF file (llama.cpp's format) read as the Llama record, HF-named float32
tensors and a tokenizer.json.

Three things differ from an HF checkpoint and are undone here:
- quantized tensors (Q8_0, Q4_K, ...) are dequantized to float32 by the `gguf` package;
- llama.cpp's converter permutes the rows of q_proj and k_proj from HF's half-split RoPE layout
  to the interleaved one its kernels use: the inverse permutation brings them back;
- the tokenizer is stored as metadata (tokens, token types, and merges with a pre-tokenizer name
  for byte-level BPE, scores for SentencePiece): it is rebuilt as a `tokenizers` tokenizer.json
  that encodes text as llama.cpp does (the split expressions it applies for that name; merges in
  the order of SentencePiece's scores), so the imported run tokenizes as the model was trained.
"""
import json

import numpy as np

from lcx.convert.llama import Llama, Unsupported, hf_shapes, unpermute_rope_rows

# GGUF tensor name (per layer: blk.N.<name>) -> HF's.
_LAYER_TENSORS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                  "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                  "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                  "ffn_norm": "post_attention_layernorm"}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}
# llama.cpp's RoPE scaling types -> model.rope.scaling.
_SCALINGS = {"none": "none", "linear": "linear", "yarn": "yarn"}

# The split expressions llama.cpp applies before byte-level BPE, by tokenizer.ggml.pre (llama.cpp's
# llama-vocab.cpp), applied one after the other, each piece kept ("isolated").
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    **{name: (_GPT2,) for name in ("gpt2", "gpt-2", "mpt", "olmo", "jais")},
    **{name: (r"\p{N}", _GPT2) for name in ("smollm", "starcoder", "refact", "codeshell",
                                             "command-r", "exaone", "minerva")},
    **{name: (_LLAMA3,) for name in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe", "dbrx",
                                      "falcon3")},
}
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # llama.cpp's (and SentencePiece's) token types


def read(path: str, where: str):
  """(Llama, {HF name: float32 array}, {file name: text} of the tokenizer, metadata to record)."""
  import gguf
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # a truncated or foreign file fails in many ways inside the reader
    raise Unsupported(f"{where}: not a complete GGUF file ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else 'unreadable'})") from None
  meta = _Metadata(reader, where)
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise Unsupported(f"{where}: general.architecture={arch!r} is not supported; supported: llama")
  llama = _architecture(meta, reader, where)
  tensors = _tensors(reader, llama, where)
  tokenizer_files = _tokenizer_files(meta, llama, where)
  record = {"gguf_name": meta.get("general.name", ""),
            "gguf_file_type": meta.get("general.file_type", None),
            "gguf_tensor_types": sorted({t.tensor_type.name for t in reader.tensors})}
  return llama, tensors, tokenizer_files, record


class _Metadata:

  def __init__(self, reader, where):
    self.fields, self.where = reader.fields, where

  def get(self, key, default=KeyError):
    field = self.fields.get(key)
    if field is None:
      if default is KeyError:
        raise Unsupported(f"{self.where}: the GGUF metadata has no {key}")
      return default
    return field.contents()


def _architecture(meta: _Metadata, reader, where: str) -> Llama:
  d_model = int(meta.get("llama.embedding_length"))
  heads = int(meta.get("llama.attention.head_count"))
  head_dim = int(meta.get("llama.attention.key_length", d_model // heads))
  rope_dims = int(meta.get("llama.rope.dimension_count", head_dim))
  if rope_dims != head_dim:
    raise Unsupported(f"{where}: llama.rope.dimension_count={rope_dims} rotates part of each "
                      f"head ({head_dim} dims); lcx's Llama import rotates whole heads")
  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise Unsupported(f"{where}: rope_freqs.weight (Llama 3.1's frequency table) is not a "
                      "scaling lcx has")
  biases = sorted(n for n in names if n.endswith(".bias"))
  if biases:
    raise Unsupported(f"{where}: the model has biases ({biases[0]}, ...), which lcx's Llama "
                      "has not")
  context = int(meta.get("llama.context_length"))
  scaling = {}
  kind = meta.get("llama.rope.scaling.type", "none")
  if kind not in _SCALINGS:
    raise Unsupported(f"{where}: llama.rope.scaling.type={kind!r} is not a scaling lcx has; "
                      f"supported: {', '.join(_SCALINGS)}")
  if kind != "none":
    factor = float(meta.get("llama.rope.scaling.factor"))
    original = int(meta.get("llama.rope.scaling.original_context_length", context / factor))
    scaling = dict(scaling=_SCALINGS[kind], factor=factor, original_length=original)
  vocab = len(reader.fields["tokenizer.ggml.tokens"].data) if (
      "tokenizer.ggml.tokens" in reader.fields) else int(meta.get("llama.vocab_size"))
  return Llama(vocab_size=vocab, d_model=d_model, n_layers=int(meta.get("llama.block_count")),
               n_heads=heads, n_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
               head_dim=head_dim, mlp_dim=int(meta.get("llama.feed_forward_length")),
               norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon")),
               rope_base=float(meta.get("llama.rope.freq_base", 10000.0)), context=context,
               tie_embeddings="output.weight" not in names, rope_scaling=scaling)


def _hf_name(gguf_name: str) -> str | None:
  stem, _, suffix = gguf_name.rpartition(".")
  parts = stem.split(".")
  if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_TENSORS:
    return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
  if stem in _GLOBAL_TENSORS:
    return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
  return None


def _tensors(reader, llama: Llama, where: str) -> dict[str, np.ndarray]:
  from gguf import quants
  shapes = hf_shapes(llama)
  out = {}
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      raise Unsupported(f"{where}: the tensor {t.name} is not part of a Llama model lcx knows")
    try:
      w = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32)
    except NotImplementedError:
      raise Unsupported(f"{where}: {t.name} is stored as {t.tensor_type.name}, which the gguf "
                        "package cannot dequantize") from None
    w = w.reshape(shapes.get(name, w.shape))
    if name.endswith("q_proj.weight"):
      w = unpermute_rope_rows(w, llama.n_heads)
    elif name.endswith("k_proj.weight"):
      w = unpermute_rope_rows(w, llama.n_kv_heads)
    out[name] = w
  missing = sorted(set(shapes) - set(out))
  if missing:
    raise Unsupported(f"{where}: the file lacks {missing[0]} (and {len(missing) - 1} more)"
                      if len(missing) > 1 else f"{where}: the file lacks {missing[0]}")
  return out


def _tokenizer_files(meta: _Metadata, llama: Llama, where: str) -> dict[str, str]:
  """tokenizer.json and tokenizer_config.json for the vocabulary the file carries."""
  from tokenizers import AddedToken
  kind = meta.get("tokenizer.ggml.model")
  if kind not in _TOKENIZER_BUILDERS:
    raise Unsupported(f"{where}: tokenizer.ggml.model={kind!r} is not supported; supported: "
                      f"{', '.join(_TOKENIZER_BUILDERS)} (or import the model's HF directory, "
                      "whose tokenizer.json is used as it is)")
  tokens = list(meta.get("tokenizer.ggml.tokens"))
  types = list(meta.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
  tokenizer = _TOKENIZER_BUILDERS[kind](meta, tokens, types, where)
  # Control tokens (<|endoftext|>, </s>) and user-defined ones are matched whole in text, as
  # llama.cpp does; the order of ids is kept, since they are already in the vocabulary.
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == _CONTROL])
  tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
  if tokenizer.get_vocab_size(with_added_tokens=True) != len(tokens):
    raise Unsupported(f"{where}: the tokenizer's tokens are not unique (the rebuilt vocabulary "
                      f"has {tokenizer.get_vocab_size(with_added_tokens=True)} of {len(tokens)})")
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": llama.context,
            "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            "clean_up_tokenization_spaces": False}
  for role in ("bos", "eos", "unknown", "padding"):
    token_id = meta.get(f"tokenizer.ggml.{role}_token_id", None)
    if token_id is not None and 0 <= int(token_id) < len(tokens):
      name = {"unknown": "unk", "padding": "pad"}.get(role, role)
      config[f"{name}_token"] = tokens[int(token_id)]
  template = meta.get("tokenizer.chat_template", None)
  if template:
    config["chat_template"] = template
  return {"tokenizer.json": tokenizer.to_str(pretty=True),
          "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n"}


def _byte_level_bpe(meta: _Metadata, tokens, types, where: str):
  """tokenizer.ggml.model=gpt2: byte-level BPE with the file's merges, after the split
  expressions llama.cpp applies for its tokenizer.ggml.pre."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  pre = meta.get("tokenizer.ggml.pre", "gpt2")
  if pre not in PRE_TOKENIZER_SPLITS:
    raise Unsupported(f"{where}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
                      f"{', '.join(sorted(PRE_TOKENIZER_SPLITS))}")
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges")]
  vocab = {token: i for i, token in enumerate(tokens)}
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_SPLITS[pre]]
      + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


def _sentencepiece_bpe(meta: _Metadata, tokens, types, where: str):
  """tokenizer.ggml.model=llama: a SentencePiece BPE vocabulary (Llama 2, TinyLlama, Mistral),
  stored as pieces, scores and types without merges. SentencePiece merges the adjacent pair whose
  joined piece scores highest; BPE merges given in that order (each piece's splits into two
  normal pieces, by descending score of the piece) do the same. Spaces become the word marker,
  one more in front when tokenizer.ggml.add_space_prefix (the default) says so; a character
  outside the vocabulary becomes its UTF-8 bytes (<0xNN>)."""
  from tokenizers import Tokenizer, decoders, models, normalizers
  scores = list(meta.get("tokenizer.ggml.scores"))
  if len(scores) != len(tokens):
    raise Unsupported(f"{where}: tokenizer.ggml.scores has {len(scores)} entries for "
                      f"{len(tokens)} tokens")
  normal = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == _NORMAL}
  merges = []
  for piece, i in normal.items():
    merges += [(-scores[i], normal[piece[:k]], normal[piece[k:]], piece[:k], piece[k:])
               for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal]
  merges = [(left, right) for *_, left, right in sorted(merges)]
  unknown = meta.get("tokenizer.ggml.unknown_token_id", None)
  tokenizer = Tokenizer(models.BPE(
      vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=True, byte_fallback=True,
      unk_token=tokens[int(unknown)] if unknown is not None else None))
  prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
  # A normalizer, not the Metaspace pre-tokenizer: that one adds no marker to a text that already
  # starts with a space, where SentencePiece adds one all the same.
  tokenizer.normalizer = normalizers.Sequence(
      ([normalizers.Prepend("\u2581")] if prefix else []) + [normalizers.Replace(" ", "\u2581")])
  tokenizer.decoder = decoders.Sequence(
      [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
      + ([decoders.Strip(" ", 1, 0)] if prefix else []))
  return tokenizer


_TOKENIZER_BUILDERS = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
