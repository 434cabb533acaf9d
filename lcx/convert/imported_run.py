"""A pretrained checkpoint written as an lcx run directory that every lcx command takes.

    RUN/config.json       the base config (default: configs/pretrain.py:tiny) with the model's
                          architecture, data.seq_len = its trained context, its tokenizer, and
                          `imported_from` (the source, its format and sha256)
    RUN/checkpoints/0/    one orbax checkpoint of the parameters, checksums in its meta
    RUN/summary.json      step 0, imported: no training tokens or FLOPs of lcx's
    RUN/tokenizer.json    the model's tokenizer (tokenizer_config.json beside it), or tokenizer.model

Everything is written to a hidden folder beside RUN and renamed into place at the end, so a
failure at any point leaves no RUN behind.
"""
import hashlib
import json
import os
import pathlib
import shutil

import jax
import ml_collections
import numpy as np

from lcx import config as config_lib
from lcx.convert import gguf_source, hf_source
from lcx.convert.llama import Llama, Unsupported, to_lcx
from lcx.data.tokenizers import HF, SENTENCEPIECE
from lcx.model.transformer import abstract_model, count_params
from lcx.runs import layout
from lcx.runs.checkpoint import Checkpointer, flat_arrays

FORMATS = ("hf", "gguf")


def sha256_of(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_source(source: pathlib.Path):
  """(format, Llama, HF-named tensors, tokenizer files, metadata) of a directory or .gguf file."""
  where = str(source)
  if source.is_dir():
    return ("hf", *hf_source.read(source, where))
  if not source.exists():
    raise Unsupported(f"{where}: no such file or directory")
  if source.suffix != ".gguf":
    raise Unsupported(f"{where}: not an HF model directory or a .gguf file")
  llama, tensors, files, record = gguf_source.read(str(source), where)
  return ("gguf", llama, tensors, {k: v.encode("utf-8") for k, v in files.items()}, record)


def import_checkpoint(source, workdir, base_config: ml_collections.ConfigDict,
                      eos_token: str = "") -> dict:
  """Writes RUN from SOURCE; returns its summary. Unsupported (one line) for anything lcx cannot
  represent, with nothing left behind."""
  source = pathlib.Path(source).expanduser().resolve()
  workdir = pathlib.Path(workdir).expanduser().resolve()
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise Unsupported(f"--workdir {workdir} already exists and is not empty; pass a new folder")
  kind, llama, tensors, tokenizer_files, record = read_source(source)
  staging = workdir.parent / f".{workdir.name}.importing-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir(parents=True)
  try:
    tokenizer = _write_tokenizer(staging, tokenizer_files, eos_token)
    config = _config(base_config, llama, tokenizer.format(run=staging))
    summary = _write_run(staging, config, llama, tensors)
    provenance = {"path": str(source), "format": kind,
                  "sha256": sha256_of(source) if source.is_file() else _directory_sha256(source),
                  **record}
    saved = json.loads((staging / layout.CONFIG).read_text())
    saved["data"]["tokenizer"] = tokenizer.format(run=workdir)  # where it will be
    saved["imported_from"] = provenance
    (staging / layout.CONFIG).write_text(json.dumps(saved, indent=2) + "\n")
    summary.update(workdir=str(workdir), imported_from=provenance,
                   config=str(workdir / layout.CONFIG),
                   checkpoints=str(workdir / layout.CHECKPOINTS))
    (staging / layout.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if workdir.exists():
      workdir.rmdir()  # empty (checked above)
    staging.rename(workdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return summary


def _directory_sha256(directory: pathlib.Path) -> str:
  """One hash over the files that make the model (config, weights, tokenizer), by name."""
  digest = hashlib.sha256()
  for file in sorted(directory.iterdir()):
    if file.is_file() and (file.suffix in (".json", ".safetensors", ".model")):
      digest.update(file.name.encode() + b"\0" + sha256_of(file).encode())
  return digest.hexdigest()


def _write_tokenizer(run: pathlib.Path, files: dict[str, bytes], eos_token: str) -> str:
  """The files written into the run; returns data.tokenizer with {run} for the run's folder."""
  for name, data in files.items():
    (run / name).write_bytes(data)
  if "tokenizer.json" not in files:
    if eos_token:
      raise Unsupported("--eos_token applies to a tokenizer.json; a SentencePiece model uses its "
                        "own end-of-sequence piece")
    return f"{SENTENCEPIECE}{{run}}/{hf_source.SENTENCEPIECE_FILE}"
  if eos_token:  # the document separator lcx places between documents
    config_file = run / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["eos_token"] = eos_token
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
  return f"{HF}{{run}}/tokenizer.json"


def _config(base: ml_collections.ConfigDict, llama: Llama, tokenizer: str):
  c = ml_collections.ConfigDict(base.to_dict())
  c.model.update(llama.model_fields())
  c.model.rope.update(llama.rope_fields())
  c.data.update(seq_len=llama.context, tokenizer=tokenizer, tokenizer_sha256="")
  c.init_from = ""
  c.wandb.job_type = "import"
  try:
    return config_lib.resolve(c, jax.device_count())
  except config_lib.ConfigError as e:
    raise Unsupported(f"the imported model's config does not resolve: {e}") from None


def _write_run(run: pathlib.Path, config, llama: Llama, tensors: dict) -> dict:
  """config.json and the checkpoint; returns the summary."""
  (run / layout.CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
  _, abstract = abstract_model(config_lib.model_config(config))
  arrays = to_lcx(llama, tensors)
  wanted = {path: a.shape for path, a in flat_arrays(abstract).items()}
  if {p: a.shape for p, a in arrays.items()} != wanted:  # the mapping and the model disagree
    raise AssertionError(f"lcx's model has other parameters than the mapping gives: {wanted}")
  leaves, treedef = jax.tree_util.tree_flatten(abstract)
  paths = list(flat_arrays(abstract))
  params = jax.tree_util.tree_unflatten(treedef, [np.asarray(arrays[p], leaf.dtype)
                                                   for p, leaf in zip(paths, leaves)])
  checkpointer = Checkpointer(run)
  try:
    checkpointer.save(0, {"params": params}, {
        "step": 0, "tokens_seen": 0, "flops_seen": 0, "train_seconds": 0.0,
        "data_position": 0, "imported": True})
  finally:
    checkpointer.close()
  counts = count_params(params)
  return {"step": 0, "imported": True, "preempted": False, "interrupted": False,
          "params": counts["total"], "non_embedding_params": counts["non_embedding"],
          "final_loss": None, "tokens_per_second": None, "mfu": None, "mfu_causal": None,
          "train_seconds": 0.0, "peak_memory_bytes": None, "tokens_seen": 0, "flops_seen": 0,
          "init_from": None, "metrics": None, "wandb": None}
