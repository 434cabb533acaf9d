"""python -m lcx.bench [--lengths 1024,2048,4096] [--eval_lengths 8192,16384,32768] [--out FILE]
    [--data_tokenizers byte,sentencepiece:PATH] [--data_lengths 1024,4096] [--data_batch 256]
    [--data_config configs/pretrain.py:125m --config.data.data_dir=DIR]
    [--context_lengths 8192,16384,32768 --contexts 1,2,4,8 --context_exchanges gather,ring]
    (context parallelism; on a CPU with XLA_FLAGS=--xla_force_host_platform_device_count=8)

The input pipeline alone (no model timed): --lengths= --eval_lengths= --profile_lengths=

Prints markdown tables (train step per scheme and length, long-context evaluation, the input
pipeline, the targets) and writes the numbers as JSON. See lcx/bench/__init__.py for what is
measured.
"""
import json
import pathlib
import platform
import sys

import jax
import tqdm
from absl import flags

from lcx import attention as attention_lib
from lcx.attention.kernels import QUADRATIC
from lcx import bench, cli
from lcx import overrides as overrides_lib
from lcx.bench import data as data_bench
from lcx.bench.context import context_configs, context_table, run_context_benchmarks
from lcx.bench.tables import eval_table, profile_table, train_table
from lcx.bench.targets import (PIPELINE_TOKENS_PER_SECOND, context_checks, preset_target_checks,
                               target_checks)
from lcx.data.sources import Documents
from lcx.data.tokenizers import make_tokenizer
from lcx.model import ModelConfig

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096"], "Train-step sequence lengths.")
_EVAL_LENGTHS = flags.DEFINE_list("eval_lengths", ["8192", "16384", "32768"],
                                  "Forward-only evaluation lengths (one row, the small model).")
_SCHEMES = flags.DEFINE_list("schemes", list(bench.SCHEMES), "Position schemes (rows), and by "
                              "name window-512 / chunk-512: every layer local, no scheme.")
_IMPLEMENTATIONS = flags.DEFINE_list("implementations", ["dense", "blockwise", "native"],
                                     "Attention implementations to compare (one that cannot run "
                                     "here is left out).")
_DENSE_SCHEMES = flags.DEFINE_list("dense_schemes", ["none"], "Schemes the dense reference runs "
                                   "(it is slow, and only its `none` rows are compared).")
_TOKENS = flags.DEFINE_integer("tokens_per_step", 8192, "Tokens per train step (batch = this / "
                               "length).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (each scheme once per round); the "
                                 "fastest counts.")
_EVAL_MEMORY = flags.DEFINE_float("eval_memory_gib", 8.0, "Evaluation memory budget: a length "
                                  "that needs more is reported, not run.")
_PROFILE_LENGTHS = flags.DEFINE_list("profile_lengths", ["1024", "2048", "4096"], "Lengths at "
                                     "which the attention kernels are timed alone (empty: none).")
_OUT = flags.DEFINE_string("out", "", "Where the JSON goes; default "
                           "benchmarks/results-<backend>.json.")
_MODEL = flags.DEFINE_string("model", "bench", "The model: `bench` (train: d_model 512, 4 layers, "
                             "float32; evaluation: the tiny preset's shape) or a preset of "
                             "configs/pretrain.py (tiny, 125m, 350m) for both, in its dtypes.")
_MODEL_FIELDS = flags.DEFINE_list("model_fields", [], "ModelConfig fields to change, field=value "
                                  "(e.g. scan_layers=true,attention_block=256).")
_EVAL_SCHEMES = flags.DEFINE_list("eval_schemes", ["alibi"], "Schemes of the evaluation rows.")
_DATA_TOKENIZERS = flags.DEFINE_list("data_tokenizers", ["byte"], "The input pipeline's "
                                     "tokenizers (byte, sentencepiece:PATH; empty: no data rows).")
_DATA_LENGTHS = flags.DEFINE_list("data_lengths", ["1024", "4096"], "The input pipeline's lengths.")
_DATA_BATCH = flags.DEFINE_integer("data_batch", 256, "The input pipeline's global batch (rows).")
_DATA_BATCHES = flags.DEFINE_integer("data_batches", 5, "Batches timed per pipeline row.")
_CONTEXT_LENGTHS = flags.DEFINE_list("context_lengths", [], "Lengths of one sequence sharded over "
                                     "--contexts devices (context parallelism; empty: none).")
_CONTEXTS = flags.DEFINE_list("contexts", ["1", "2", "4", "8"], "mesh.context sizes of those rows.")
_EXCHANGES = flags.DEFINE_list("context_exchanges", ["gather", "ring"],
                               "mesh.context_exchange values of those rows (context > 1).")
_DATA_CONFIG = flags.DEFINE_string("data_config", "configs/pretrain.py:tiny", "The run config "
                                   "whose corpus (data.name, data_dir, ...) the pipeline reads; "
                                   "--config.data.FIELD=VALUE changes it.")

def _describe(fields: dict) -> str:
  m = ModelConfig(**fields)
  return (f"d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads x {m.head_dim}, {m.mlp} "
          f"MLP {m.mlp_dim}, vocab {m.vocab_size}, {m.compute_dtype} compute"
          + (", layers scanned" if m.scan_layers else "")
          + (f", remat {m.remat}" if m.remat != "none" else ""))


def main(argv, overrides):
  if len(argv) > 1:
    sys.exit(f"lcx.bench: unexpected arguments {argv[1:]}")
  lengths = [int(n) for n in _LENGTHS.value]
  eval_lengths = [int(n) for n in _EVAL_LENGTHS.value]
  unknown = sorted(set(_SCHEMES.value) - set(bench.ROWS))
  if unknown:
    sys.exit(f"lcx.bench: unknown schemes {unknown}; allowed: {', '.join(bench.ROWS)}")
  try:
    if _MODEL.value == "bench":
      train_model, eval_model = bench.TRAIN_MODEL, bench.EVAL_MODEL
    else:
      try:
        train_model = eval_model = bench.preset_model(_MODEL.value)
      except ValueError as e:  # the presets' own message, which lists them
        raise ValueError(f"lcx.bench: --model: {e}, or bench (its own model)") from None
    train_model = bench.with_fields({"compute_dtype": "float32", **train_model},
                                    _MODEL_FIELDS.value)
    eval_model = bench.with_fields(eval_model, _MODEL_FIELDS.value)
  except ValueError as e:
    sys.exit(str(e))
  unknown = sorted(set(_EVAL_SCHEMES.value) - set(bench.ROWS))
  if unknown:
    sys.exit(f"lcx.bench: unknown evaluation schemes {unknown}; allowed: "
             f"{', '.join(bench.ROWS)}")
  device = jax.local_devices()[0]
  mesh = bench.single_device_mesh()
  peak = bench.PeakMeter(mesh, train_model["compute_dtype"])
  machine = (f"{device.device_kind} ({jax.default_backend()}), {platform.processor() or 'cpu'}, "
             f"jax {jax.__version__}")
  runnable = bench.implementations_for("none", tuple(_IMPLEMENTATIONS.value))
  per_length = sum(len(set(_SCHEMES.value) & set(_DENSE_SCHEMES.value)) if name in QUADRATIC
                   else len(_SCHEMES.value) for name in runnable)
  total = len(lengths) * per_length + sum(
      len(eval_lengths) * len(bench.implementations_for(s, tuple(_IMPLEMENTATIONS.value)))
      for s in _EVAL_SCHEMES.value)
  data_lengths = [int(n) for n in _DATA_LENGTHS.value]
  total += len(_DATA_TOKENIZERS.value) * len(data_lengths)
  try:
    context_lengths, contexts = ([int(n) for n in flag.value]
                                 for flag in (_CONTEXT_LENGTHS, _CONTEXTS))
  except ValueError:
    sys.exit(f"lcx.bench: --context_lengths={','.join(_CONTEXT_LENGTHS.value)} and --contexts="
             f"{','.join(_CONTEXTS.value)} take whole numbers, e.g. 8192,16384 and 1,2,4,8")
  for length, context in ((n, c) for n in context_lengths for c in contexts):
    if context < 1 or length % (2 * context):
      sys.exit(f"lcx.bench: --contexts={context} with --context_lengths={length}: each context "
               f"must be positive and each length a multiple of 2 x context (two equal chunks "
               f"per device)")
  unknown = sorted(set(_EXCHANGES.value) - set(attention_lib.CONTEXT_EXCHANGES))
  if unknown:
    sys.exit(f"lcx.bench: unknown --context_exchanges {unknown}; allowed: "
             f"{', '.join(attention_lib.CONTEXT_EXCHANGES)}")
  total += len(context_configs(context_lengths, contexts, _EXCHANGES.value))
  try:  # the corpus the pipeline reads, and its tokenizers, checked before anything is timed
    data = overrides_lib.load_config(_DATA_CONFIG.value, overrides).data
    docs = (Documents(data.name, "train", data_dir=data.data_dir, text_dir=data.text_dir,
                      text_glob=data.text_glob, text_key=data.text_key)
            if _DATA_TOKENIZERS.value else None)
    for name in _DATA_TOKENIZERS.value:
      make_tokenizer(name)
  except ValueError as e:
    sys.exit(f"lcx.bench: {e}")
  progress = tqdm.tqdm(total=total, desc="lcx.bench", unit="config")
  train_rows = bench.run_train_benchmarks(mesh, peak, _SCHEMES.value, lengths,
                                          tuple(_IMPLEMENTATIONS.value), _TOKENS.value,
                                          _REPEATS.value, progress, tuple(_DENSE_SCHEMES.value),
                                          train_model)
  eval_rows = bench.run_eval_benchmarks(eval_lengths, tuple(_IMPLEMENTATIONS.value),
                                        int(_EVAL_MEMORY.value * 2 ** 30), _REPEATS.value,
                                        progress, eval_model, tuple(_EVAL_SCHEMES.value))
  profiles = []
  for length in (int(n) for n in _PROFILE_LENGTHS.value):
    for implementation in bench.implementations_for("none", attention_lib.TILED):
      if implementation in _IMPLEMENTATIONS.value:
        progress.set_postfix_str(f"attention profile {implementation} L={length}")
        profiles.append(bench.attention_profile(
            ModelConfig(**train_model), max(1, _TOKENS.value // length), length,
            _REPEATS.value, implementation))
  context_rows = run_context_benchmarks(context_lengths, contexts, _REPEATS.value, progress,
                                        model_fields=eval_model,
                                        exchanges=tuple(_EXCHANGES.value))
  data_rows = (data_bench.pipeline_rows(docs, _DATA_TOKENIZERS.value, data_lengths,
                                        _DATA_BATCH.value, _DATA_BATCHES.value, progress)
               if docs is not None else [])
  progress.close()
  checks = (target_checks(train_rows, eval_rows, profiles) if _MODEL.value == "bench"
            else preset_target_checks(train_rows, eval_rows))
  checks += [(f"input pipeline >= {PIPELINE_TOKENS_PER_SECOND / 1e6:g}M tokens/s per host "
              f"({r['tokenizer']}, L={r['length']}, batch {r['batch']})",
              r["tokens_per_second"] >= PIPELINE_TOKENS_PER_SECOND,
              f"{r['tokens_per_second'] / 1e6:.1f}M") for r in data_rows]
  checks += context_checks(context_rows) if _MODEL.value == "bench" else []
  data_text = "" if not data_rows else (
      f"\n\n### Input pipeline (one process building the whole global batch from the token cache "
      f"of {data_rows[0]['corpus']}; first preparation: tokenizing the train split once)\n\n"
      + data_bench.pipeline_table(data_rows))
  profile_text = "" if not profiles else (
      f"\n\n### Where the attention time goes (one layer of the train model: "
      f"{profiles[0]['heads']} heads x {profiles[0]['head_dim']}, {_TOKENS.value} tokens)"
      "\n\n" + profile_table(profiles, peak.best, train_rows))
  train_text = "" if not train_rows else (
      f"\n\n### Train step (model `{_MODEL.value}`: {_describe(train_model)}; AdamW; "
      f"{_TOKENS.value} tokens per step)\n\nstep s: the fastest of {_REPEATS.value} rounds; "
      f"time vs none: the median over rounds of the step's time over `none`'s in the same "
      f"round; MFU (PaLM): 6N + 12 n_layers d_attn L FLOPs per token, full attention, "
      f"comparable with other codebases; MFU (causal): 6N + 6 n_layers d_attn L, the causal "
      f"half the kernels compute\n\n{train_table(train_rows)}")
  context_text = "" if not context_rows else (
      f"\n\n### Context parallelism (one sequence of ALiBi's {_describe(eval_model)}, "
      f"sharded over mesh.context devices, keys exchanged by all-gather or ring; blockwise; "
      f"activations: XLA's temporaries per device)\n\n{context_table(context_rows)}")
  eval_text = "" if not eval_rows else (
      f"\n\n### Forward-only evaluation ({_describe(eval_model)}; one row)\n\n"
      f"{eval_table(eval_rows)}")
  print(f"\n## {machine}\n\nmatmul peak in this run (best of the samples taken with every "
        f"timing round): {peak.best / 1e9:,.0f} GFLOP/s ({train_model['compute_dtype']})"
        f"{train_text}{eval_text}{context_text}{profile_text}{data_text}\n\n### Targets\n\n"
        "| target | met | measured |\n| --- | --- | ---: |\n"
        + "\n".join(f"| {what} | {'yes' if met else '**no**'} | {value} |"
                     for what, met, value in checks))
  out = pathlib.Path(_OUT.value or f"benchmarks/results-{jax.default_backend()}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"machine": machine, "model": _MODEL.value,
                             "train_model": train_model, "eval_model": eval_model,
                             "peak_flops": peak.best, "train": train_rows,
                             "eval": eval_rows, "context": context_rows,
                             "attention_profiles": profiles,
                             "data": data_rows, "targets": [
                                 {"target": w, "met": m, "measured": v} for w, m, v in checks]},
                            indent=2) + "\n")
  print(f"\nnumbers in {out}")


if __name__ == "__main__":
  cli.run(main)
