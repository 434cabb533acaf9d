"""The benchmark's markdown tables: the train step per scheme and length, long-context
evaluation, and where one layer's attention time goes."""
from lcx.bench.models import TRAIN_MODEL

TRAIN_LAYERS = TRAIN_MODEL["n_layers"]


def _gib(n):
  return f"{n / 2 ** 30:.2f}"


def _ratio(x):
  return "-" if x is None else f"{x:.3f}"


def train_table(rows) -> str:
  lines = ["| scheme | L | batch | attention | step s | tokens/s | MFU (PaLM) | MFU (causal) | "
           "time vs none | memory GiB | memory vs none |", "| --- | ---: | ---: | --- | ---: | "
           "---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    kernel = r["implementation"] + (f" ({r['kernel']})" if r["kernel"] != r["implementation"]
                                    else "")
    lines.append(f"| {r['scheme']} | {r['length']} | {r['batch']} | {kernel} | "
                 f"{r['step_seconds']:.3f} | {r['tokens_per_second']:,.0f} | "
                 f"{100 * r['mfu']:.1f}% | {100 * r['mfu_causal']:.1f}% | "
                 f"{_ratio(r['time_vs_none'])} | "
                 f"{_gib(r['memory_bytes'])} | {_ratio(r['memory_vs_none'])} |")
  return "\n".join(lines)


def eval_table(rows) -> str:
  lines = ["| scheme | length | attention | seconds | tokens/s | memory GiB |",
           "| --- | ---: | --- | ---: | ---: | ---: |"]
  for r in rows:
    if r["seconds"] is None:  # over the budget: what it would need
      timing, memory = "not run | -", f"{_gib(r['memory_bytes'])} (needed)"
    else:
      timing = f"{r['seconds']:.2f} | {r['tokens_per_second']:,.0f}"
      memory = _gib(r["memory_bytes"])
    kernel = r["implementation"] + (f" ({r['kernel']})" if r["kernel"] != r["implementation"]
                                    else "")
    lines.append(f"| {r['scheme']} | {r['length']} | {kernel} | {timing} | {memory} |")
  return "\n".join(lines)


def profile_table(profiles, peak: float, train_rows) -> str:
  """Where one layer's attention time goes, one column per kernel, against the matmul peak and
  the train step with that kernel."""
  def column(p):
    rate = p["forward_backward_matmul_flops"] / p["forward_backward_seconds"]
    step = next((r for r in train_rows if r["scheme"] == "none" and r["length"] == p["length"]
                 and r["implementation"] == p["implementation"]), None)
    share = "-" if step is None else (
        f"{100 * TRAIN_LAYERS * p['forward_backward_seconds'] / step['step_seconds']:.0f}% of "
        f"{step['step_seconds']:.2f} s")
    bias_cost = (p["alibi_vs_none"] - 1) * p["forward_backward_seconds"]
    bias_share = "-" if step is None else (
        f"{100 * TRAIN_LAYERS * bias_cost / step['step_seconds']:+.1f}%")
    return [str(p["batch"]), f"{1e3 * p['forward_seconds']:.0f} ms",
            f"{1e3 * p['forward_backward_seconds']:.0f} ms",
            f"{p['forward_backward_matmul_flops'] / 1e9:.1f} GFLOP ({p['tiles']} tiles)",
            f"{rate / 1e9:.0f} GFLOP/s = {100 * rate / peak:.0f}% of peak", share,
            f"{1e3 * p['forward_backward_alibi_seconds']:.0f} ms ({p['alibi_vs_none']:.3f}x)",
            bias_share]

  p = profiles[0]
  what = ["batch", "forward", "forward + backward",
          f"matmul work in it (the visible {p['block']}x{p['block']} tiles, 7 products each)",
          "its matmul rate", f"{TRAIN_LAYERS} layers of it in the `none` train step",
          "forward + backward with ALiBi's bias (timed in alternation with the line above; "
          "the ratio is the median of the rounds' ratios)",
          f"what the bias adds to the `none` train step ({TRAIN_LAYERS} layers)"]
  columns = [column(p) for p in profiles]
  lines = ["| what | " + " | ".join(f"{p['implementation']} L={p['length']}" for p in profiles)
           + " |",
           "| --- |" + " ---: |" * len(profiles)]
  lines += [f"| {w} | " + " | ".join(c[i] for c in columns) + " |" for i, w in enumerate(what)]
  tile = max(p["tile_matmul_flops_per_second"] for p in profiles)
  lines.append(f"\nOne XLA tile product alone (batch x heads of {p['block']}x{p['head_dim']} @ "
               f"{p['head_dim']}x{p['block']}, what the blockwise kernel is made of), the best of "
               f"the lengths: {tile / 1e9:.0f} GFLOP/s = {100 * tile / peak:.0f}% of peak.")
  return "\n".join(lines)
