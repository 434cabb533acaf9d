"""An evaluation's results as the markdown tables `python -m lcx.evaluate` prints."""
from lcx.evaluate.plots import depth_mean
from lcx.evaluate.records import DISTANCE_BUCKETS, pool_distances


def format_table(results: dict) -> str:
  """Markdown tables: perplexity (non-overlapping and sliding, and LongPPL where measured) per
  length, then retrieval."""
  sliding = {r["length"]: r for r in results["sliding"]}
  longppl = results["eval_options"].get("longppl")
  extra = " LongPPL | key tokens |" if longppl else ""
  lines = [f"{results['scheme']} {results['name']} (step {results['checkpoint_step']}, trained at "
           f"{results['train_length']})", "",
           "| length | x train | loss | ppl | bits/byte | sliding ppl | tokens |" + extra,
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: | ---: |" * bool(longppl)]
  for row in results["perplexity"]:
    slide = sliding.get(row["length"], {})
    if "loss" not in row:
      lines.append(f"| {row['length']} | {row['multiple']:g} | n/a | n/a | n/a | n/a | 0 |"
                   + " n/a | n/a |" * bool(longppl))
      continue
    key = row.get("longppl")
    cells = "" if not longppl else (
        " - | - |" if key is None else  # within the short window: no key tokens by definition
        f" {'-' if key['longppl'] is None else format(key['longppl'], '.3f')} | "
        f"{key['key_fraction']:.2%} |")
    lines.append(f"| {row['length']} | {row['multiple']:g} | {row['loss']:.4f} | "
                 f"{row['perplexity']:.3f} | {row['bits_per_byte']:.4f} | "
                 f"{slide.get('perplexity', float('nan')):.3f} | {row['tokens']} |" + cells)
  if results["retrieval"]:
    lines += ["", retrieval_table(results)]
  return "\n".join(lines)


def retrieval_table(results: dict) -> str:
  """Per task and style: exact / ranked accuracy at each length (mean over depths)."""
  grids = results["retrieval"]
  lengths = next(iter(grids.values()))["lengths"]
  lines = ["| retrieval | " + " | ".join(str(n) for n in lengths) + " | longest at >= 90% |",
           "| --- |" + " ---: |" * (len(lengths) + 1)]
  for key, grid in grids.items():
    cells = [("n/a" if e is None else f"{e:.0%} / {r:.0%}")
             for e, r in zip(depth_mean(grid["exact"]), depth_mean(grid["ranked"]))]
    lines.append(f"| {key} | " + " | ".join(cells) + f" | {grid['longest_at_90'] or 'none'} |")
  lines.append(f"\nCells: exact match of greedy decoding / true answer ranked first among "
               f"{round(1 / next(iter(grids.values()))['chance'])} (chance "
               f"{next(iter(grids.values()))['chance']:.0%}), mean over depths.")
  by_distance = {key: grid["by_distance"] for key, grid in grids.items() if "by_distance" in grid}
  if by_distance:
    unit = next(iter(by_distance.values()))["unit"]
    lines += ["", f"| by needle distance ({unit}-token segments back) | "
              + " | ".join(DISTANCE_BUCKETS) + " |", "| --- |" + " ---: |" * len(DISTANCE_BUCKETS)]
    for key, record in by_distance.items():
      exact, ranked = (pool_distances([record], kind) for kind in ("exact", "ranked"))
      cells = [f"{exact[b][0]:.0%} / {ranked[b][0]:.0%} ({exact[b][1]})" if b in exact else "-"
               for b in DISTANCE_BUCKETS]
      lines.append(f"| {key} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
