"""An HF model directory (config.json, *.safetensors, a tokenizer) read as the Llama record,
float32 tensors and the tokenizer's files. numpy only: `safetensors` reads the arrays (bfloat16
through ml_dtypes, which JAX brings)."""
import json
import pathlib

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for bf16 checkpoints)
import numpy as np

from lcx.convert.llama import Llama, Unsupported, from_hf_config, hf_shapes

# Tensors some checkpoints carry that lcx recomputes (RoPE's table).
_DERIVED = (".rotary_emb.inv_freq",)
# The tokenizer files taken along, by preference: tokenizer.json (tokenizers), else a
# SentencePiece model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SENTENCEPIECE_FILE = "tokenizer.model"


def read(directory: pathlib.Path, where: str):
  """(Llama, {HF name: float32 array}, {file name: bytes} of the tokenizer, metadata to record)."""
  config_file = directory / "config.json"
  if not config_file.is_file():
    raise Unsupported(f"{where}: no config.json (an HF model directory has one, beside its "
                      "*.safetensors)")
  try:
    cfg = json.loads(config_file.read_text())
  except (ValueError, OSError) as e:
    raise Unsupported(f"{where}/config.json cannot be read as JSON ({e})") from None
  try:
    llama = from_hf_config(cfg, where)
  except KeyError as e:
    raise Unsupported(f"{where}/config.json has no {e.args[0]}") from None
  tensors = _tensors(directory, llama, where)
  return llama, tensors, _tokenizer_files(directory, where), {
      "hf_architecture": (cfg.get("architectures") or [""])[0]}


def _files(directory: pathlib.Path, where: str) -> list[pathlib.Path]:
  index = directory / "model.safetensors.index.json"
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, OSError) as e:
      raise Unsupported(f"{where}/{index.name} is not a safetensors index ({e})") from None
    files = [directory / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
      raise Unsupported(f"{where}: {index.name} names {missing[0]}, which is not there")
    return files
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise Unsupported(f"{where}: no *.safetensors files (PyTorch .bin checkpoints are not read; "
                      "save the model with safe_serialization=True)")
  return files


def _tensors(directory: pathlib.Path, llama: Llama, where: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  shapes = hf_shapes(llama)
  out = {}
  for file in _files(directory, where):
    try:
      with safe_open(str(file), framework="numpy") as f:
        for name in f.keys():
          if name.endswith(_DERIVED):
            continue
          if name not in shapes:
            if name == "lm_head.weight" and llama.tie_embeddings:
              continue  # tied: the same values as the embedding
            raise Unsupported(f"{where}: {file.name} holds {name}, which lcx's Llama has not "
                              "(biases, or another architecture)")
          out[name] = np.asarray(f.get_tensor(name), np.float32)
    except Unsupported:
      raise
    except Exception as e:  # safetensors raises its own error types for damaged files
      raise Unsupported(f"{where}: {file.name} is not a complete safetensors file "
                        f"({str(e).splitlines()[0][:200]})") from None
  for name, shape in shapes.items():
    if name not in out:
      raise Unsupported(f"{where}: no tensor {name} in the checkpoint"
                        + (" (config.json says tie_word_embeddings=false)"
                           if name == "lm_head.weight" else ""))
    if out[name].shape != shape:
      raise Unsupported(f"{where}: {name} is {out[name].shape}, config.json implies {shape}")
  return out


def _tokenizer_files(directory: pathlib.Path, where: str) -> dict[str, bytes]:
  if (directory / "tokenizer.json").is_file():
    return {name: (directory / name).read_bytes() for name in TOKENIZER_FILES
            if (directory / name).is_file()}
  if (directory / SENTENCEPIECE_FILE).is_file():
    return {SENTENCEPIECE_FILE: (directory / SENTENCEPIECE_FILE).read_bytes()}
  raise Unsupported(f"{where}: no tokenizer.json or {SENTENCEPIECE_FILE}; the imported run needs "
                    "the model's tokenizer")
