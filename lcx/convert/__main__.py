"""Pretrained models in and out of lcx.

  python -m lcx.convert import SOURCE --workdir RUN [--config configs/pretrain.py:tiny]
      [--eos_token TOKEN] [--config.a.b=v ...]
  python -m lcx.convert export --workdir RUN --to DIR [--config.a.b=v ...]

import: SOURCE is an HF model directory (config.json + *.safetensors, LlamaForCausalLM or
MistralForCausalLM) or a llama-architecture .gguf file (F32, F16, BF16, Q8_0, Q4_0, Q4_1, the
K-quants, ...: dequantized to float32). RUN becomes an lcx run (see lcx.convert.imported_run)
that lcx.evaluate, fine-tunes (--config.init_from=RUN) and sweeps take. --config supplies the
data, training and evaluation settings around the model; --eos_token names the token lcx places
between documents (default: the model's eos_token).

export: RUN's latest checkpoint as an HF Llama directory that transformers loads; overrides apply
first (e.g. --config.model.rope.scaling=yarn --config.model.rope.factor=2, a zero-shot extension).
"""
import pathlib
import sys

from absl import flags

from lcx import cli
from lcx import overrides as overrides_lib
from lcx.config import ConfigError
from lcx.convert.export import export_run
from lcx.convert.imported_run import import_checkpoint
from lcx.convert.llama import Unsupported

# The repository's own presets, wherever the command runs from.
DEFAULT_CONFIG = f"{pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'pretrain.py'}:tiny"

_WORKDIR = flags.DEFINE_string("workdir", None, "The lcx run to write (import) or read (export).")
_TO = flags.DEFINE_string("to", None, "export: the HF model directory to write.")
_CONFIG = flags.DEFINE_string("config", DEFAULT_CONFIG, "import: the config file and preset "
                              "whose data, training and evaluation settings the run gets.")
_EOS = flags.DEFINE_string("eos_token", "", "import: the token that separates documents "
                           "(default: the tokenizer's eos_token).")
COMMANDS = ("import", "export")


def main(argv, overrides):
  cli.quiet_library_logs()
  command, *rest = argv[1:] or [""]
  if command not in COMMANDS:
    sys.exit(f"lcx.convert: the first argument must be one of {', '.join(COMMANDS)}, got "
             f"{command!r}")
  if not _WORKDIR.value:
    sys.exit(f"lcx.convert {command}: --workdir RUN is required")
  try:
    if command == "import":
      if len(rest) != 1:
        sys.exit("lcx.convert import: give one SOURCE (an HF model directory or a .gguf file)")
      base = overrides_lib.load_config(_CONFIG.value, overrides)
      summary = import_checkpoint(rest[0], _WORKDIR.value, base, eos_token=_EOS.value)
      print(f"imported {summary['imported_from']['path']} ({summary['imported_from']['format']}, "
            f"{summary['params']:,} parameters) as the run {summary['workdir']}")
    else:
      if rest or not _TO.value:
        sys.exit("lcx.convert export: give --workdir RUN --to DIR, and no other arguments")
      written = export_run(_WORKDIR.value, _TO.value, overrides)
      print(f"exported step {written['step']} of {_WORKDIR.value} to {written['directory']} "
            f"({written['tensors']} tensors)")
  except (Unsupported, ConfigError, ValueError) as e:
    sys.exit(f"lcx.convert {command}: {e}")
  except OSError as e:
    sys.exit(f"lcx.convert {command}: {cli.os_error(e)}")


if __name__ == "__main__":
  cli.run(main)
