"""What context parallelism buys: the train step of one long sequence sharded over 1, 2, 4, 8
devices (mesh.context), with each device's memory as XLA's buffer assignment gives it.

On a simulated CPU mesh (XLA_FLAGS=--xla_force_host_platform_device_count=8) the devices share
one machine's cores, so the step times say what the sharded program costs in work, not what an
interconnect would add or hide; the memory per device is what a real device would need.
"""
import jax

from lcx.bench.models import EVAL_MODEL, VARIANTS
from lcx.bench.timing import PreparedStep, kernel_of
from lcx.model import ModelConfig
from lcx.sharding import make_mesh


def context_configs(lengths, contexts, exchanges) -> list[tuple[int, int, str]]:
  """(length, context, exchange) of each row: context 1 once per length (exchange "-": nothing
  is exchanged), every other context once per exchange."""
  return [(length, context, exchange) for length in lengths for context in contexts
          for exchange in (("-",) if context == 1 else exchanges)]


def run_context_benchmarks(lengths, contexts, repeats: int, progress, scheme: str = "alibi",
                           model_fields=EVAL_MODEL, exchanges=("gather",)) -> list[dict]:
  """One row per (length, context, exchange): step seconds and per-device memory of a train step
  on one sequence, the length sharded over `context` devices (those the process has) whose keys
  reach the queries by `exchange` (lcx.attention.CONTEXT_EXCHANGES), and both against
  context=1 at the same length."""
  rows = []
  devices = jax.devices()
  for length, context, exchange in context_configs(lengths, contexts, exchanges):
    if context > len(devices):
      progress.write(f"context={context}: this process has {len(devices)} devices; set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={context} on a CPU")
      progress.update(1)
      continue
    model = ModelConfig(**model_fields, **VARIANTS[scheme], max_len=length,
                        attention="blockwise",
                        context_exchange="gather" if exchange == "-" else exchange)
    progress.set_postfix_str(f"context={context} {exchange} L={length}")
    mesh = make_mesh(dict(data=1, fsdp=1, context=context, tensor=1), devices[:context])
    step = PreparedStep(model, 1, length, mesh)
    for _ in range(repeats):
      step.run()
    timing = step.timing()
    analysis = step.compiled.memory_analysis()
    rows.append({"scheme": scheme, "length": length, "context": context, "exchange": exchange,
                 "kernel": kernel_of(model, length, packed=True),
                 "step_seconds": timing.seconds, "tokens_per_second": length / timing.seconds,
                 "memory_bytes": timing.memory_bytes,
                 "activation_bytes": int(analysis.temp_size_in_bytes),
                 "compile_seconds": timing.compile_seconds})
    progress.write(f"row context={context} {exchange} L={length}: {timing.seconds:.2f} s/step, "
                   f"{analysis.temp_size_in_bytes / 2 ** 20:.0f} MiB activations per device")
    progress.update(1)
  for row in rows:
    base = next((r for r in rows if r["length"] == row["length"] and r["context"] == 1), None)
    row["activations_vs_context_1"] = (row["activation_bytes"] / base["activation_bytes"]
                                       if base else None)
    row["time_vs_context_1"] = row["step_seconds"] / base["step_seconds"] if base else None
  return rows


def context_table(rows) -> str:
  ratio = lambda x: "-" if x is None else f"{x:.2f}"
  lines = ["| L | context | exchange | step s | tokens/s | activations MiB per device | "
           "vs context 1 | memory MiB per device | time vs context 1 |",
           "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    lines.append(f"| {r['length']} | {r['context']} | {r['exchange']} | "
                 f"{r['step_seconds']:.2f} | "
                 f"{r['tokens_per_second']:,.0f} | {r['activation_bytes'] / 2 ** 20:.0f} | "
                 f"{ratio(r['activations_vs_context_1'])} | {r['memory_bytes'] / 2 ** 20:.0f} | "
                 f"{ratio(r['time_vs_context_1'])} |")
  return "\n".join(lines)
