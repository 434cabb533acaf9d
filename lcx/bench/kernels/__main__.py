"""python -m lcx.bench.kernels [--model bench|125m|...] [--lengths 256,1024,4096] [--out FILE]

Measures the kernel table `model.attention=auto` chooses from (see lcx.bench.kernels): every
kernel that can run each scheme on this device, at `--tokens` per call (batch = tokens / length).
Writes lcx/attention/tables/<device>.json (--out elsewhere) and prints the table with what `auto`
now runs at each length.
"""
import datetime
import json
import pathlib
import sys

import jax
import tqdm
from absl import flags

from lcx import bench, cli, positions
from lcx.attention import choice as kernel_choice
from lcx.bench.kernels import biased_schemes, measure, table_markdown
from lcx.model import ModelConfig

_MODEL = flags.DEFINE_string("model", "bench", "Whose attention shapes: `bench` (8 heads x 64, "
                             "float32) or a preset of configs/pretrain.py (tiny, 125m, 350m), in "
                             "its compute dtype.")
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024", "4096"], "Sequence lengths.")
_SCHEMES = flags.DEFINE_list("schemes", [], "Schemes (default: none and every scheme with a "
                             "bias; a scheme without one is timed as none).")
_TOKENS = flags.DEFINE_integer("tokens", 8192, "Tokens per call (batch = tokens / length).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds; each kernel keeps its fastest.")
_MEMORY = flags.DEFINE_float("memory_gib", 8.0, "A kernel whose call would need more memory is "
                             "left out at that length (dense at long lengths).")
_OUT = flags.DEFINE_string("out", "", "Where the table goes; default "
                           "lcx/attention/tables/<device>.json.")


def main(argv, overrides):
  del overrides
  if len(argv) > 1:
    sys.exit(f"lcx.bench.kernels: unexpected arguments {argv[1:]}")
  schemes = _SCHEMES.value or list(biased_schemes())
  unknown = sorted(set(schemes) - set(positions.available()))
  if unknown:
    sys.exit(f"lcx.bench.kernels: unknown schemes {unknown}; allowed: "
             f"{', '.join(positions.available())}")
  try:
    lengths = sorted({int(n) for n in _LENGTHS.value})
    if not lengths or min(lengths) < 1:
      raise ValueError
  except ValueError:
    sys.exit(f"lcx.bench.kernels: --lengths takes positive integers; got {_LENGTHS.value}")
  try:
    fields = (bench.TRAIN_MODEL if _MODEL.value == "bench"
              else bench.preset_model(_MODEL.value))
  except ValueError as e:
    sys.exit(f"lcx.bench.kernels: --model: {e}, or bench")
  model = ModelConfig(**fields)
  device = kernel_choice.device_name()
  out = _OUT.value or str(kernel_choice.TABLE_DIR / f"{device}.json")
  # Without a bias every scheme is none: time it once.
  schemes = list(dict.fromkeys(s if positions.bias_kind(s) else "none" for s in schemes))
  progress = tqdm.tqdm(total=len(schemes) * len(lengths), desc="lcx.bench.kernels",
                       unit="length")
  seconds, skipped = measure(model, schemes, lengths, _TOKENS.value, _REPEATS.value,
                             int(_MEMORY.value * 2 ** 30), progress)
  progress.close()
  data = {"device": device, "device_kind": jax.local_devices()[0].device_kind,
          "jax": jax.__version__, "measured": datetime.date.today().isoformat(),
          "command": "python -m lcx.bench.kernels " + " ".join(sys.argv[1:]),
          "what": f"one attention layer, forward + backward, {model.n_heads} heads x "
                  f"{model.head_dim}, {model.compute_dtype}, {_TOKENS.value} tokens per call, "
                  f"tile {model.attention_block}; seconds, fastest of {_REPEATS.value} rounds",
          "seconds": {s: {str(n): t for n, t in rows.items()} for s, rows in seconds.items()},
          "left_out_bytes": {s: {str(n): t for n, t in rows.items()}
                             for s, rows in skipped.items()}}
  table = kernel_choice.parse(data, out)
  print(f"\n## Kernel table: {device} ({data['device_kind']}), jax {jax.__version__}\n\n"
        f"{data['what']}\n\n{table_markdown(table)}")
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(out).write_text(json.dumps(data, indent=2) + "\n")
  print(f"\nwritten to {out}")


if __name__ == "__main__":
  cli.run(main)
