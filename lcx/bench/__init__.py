"""What each position scheme costs: train-step speed and memory, and long-context evaluation.

  python -m lcx.bench [--lengths 1024,2048,4096] [--eval_lengths 8192,16384,32768] [--out FILE]

Everything is measured in one process on the first local device: the matmul peak of that device
(sampled again in every timing round, the best kept, so that a slow spell of a shared machine
cannot flatter the utilization), one jitted train step (AdamW included) per scheme, length and
attention implementation, a forward pass of a small model at long lengths, and where the attention
time goes: the tiled kernels alone, with and without ALiBi's bias, and the tile-shaped matmuls the
blockwise one is made of. Memory is what XLA's buffer assignment needs for the compiled step
(arguments + outputs + temporaries - donated), the same on every backend and independent of what
ran before in the process.

The package: models.py (what is timed), timing.py (how), data.py (the input pipeline alone),
tables.py and targets.py (what __main__.py prints and checks), kernels/ (a device's kernel table).
"""
from lcx.bench.models import (EVAL_MODEL, ROWS, RULES, SCHEMES, TRAIN_MODEL, VARIANTS, preset_model,
                              single_device_mesh, with_fields)
from lcx.bench.timing import (PeakMeter, PreparedStep, Timing, attention_profile,
                              compiled_memory, forward_fn, implementations_for, kernel_of,
                              paired_ratio, run_eval_benchmarks, run_train_benchmarks,
                              time_forward, time_train_steps, train_flops_per_token)

__all__ = ["EVAL_MODEL", "ROWS", "RULES", "SCHEMES", "TRAIN_MODEL", "VARIANTS", "PeakMeter",
           "PreparedStep", "Timing", "attention_profile", "compiled_memory", "forward_fn",
           "implementations_for", "kernel_of", "paired_ratio", "preset_model",
           "run_eval_benchmarks", "run_train_benchmarks", "single_device_mesh", "time_forward",
           "time_train_steps", "train_flops_per_token", "with_fields"]
