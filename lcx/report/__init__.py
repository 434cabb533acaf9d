"""python -m lcx.report DIR: aggregate a study into DIR/report.md and PNG figures.

DIR holds runs as the sweep lays them out, DIR/<run>/<stage>/ with summary.json for training
stages and eval/<name>.json for their evaluations; any folder of lcx runs and evaluations works.
Each evaluation becomes a row (a "variant": the scheme, with its RoPE scaling and whether it was
fine-tuned), with its perplexity and retrieval at each multiple of the pretraining length, and
the cost of the training behind it. Every figure draws a variant in the same colour and marker.

The report reads JSON only (no JAX):
  variants.py  the evaluations as variants, their labels, what of the study is missing
  tables.py    the markdown tables;  plots.py  the PNGs;  claims.py  claims vs measured
"""
import pathlib

from lcx.report.claims import claims_table
from lcx.report.plots import figures, looks
from lcx.report.tables import (distance_tables, memory_cost_table, segment_table, tables)
from lcx.report.variants import (Unreadable, Variant, collect, distinguish, label, study_name,
                                 unfinished_stages)

__all__ = ["Unreadable", "Variant", "claims_table", "collect", "distance_tables", "distinguish",
           "figures", "label", "looks", "memory_cost_table", "segment_table", "study_name",
           "tables", "unfinished_stages", "write_report"]


def write_report(directory) -> tuple[pathlib.Path, str]:
  """DIR/report.md and DIR/figures/*.png; returns the report's path and its tables."""
  directory = pathlib.Path(directory).expanduser()
  if not directory.is_dir():
    raise ValueError(f"{directory} is not a directory; pass a study directory (the sweep's --out)")
  variants, problems = collect(directory)
  missing = unfinished_stages(directory)
  if not variants:
    raise ValueError(f"{directory} holds no evaluated lcx runs (no <run>/eval/*.json with a "
                     "summary.json beside it)" + "".join(f"; {p}" for p in problems + missing))
  title = study_name(variants, directory)
  paths = figures(variants, directory / "figures", title)
  table = tables(variants)
  if missing or problems:
    table += "\n\nNot in this report:\n" + "\n".join(
        f"- {line}" for line in missing + problems)
  body = [f"# Study report: {title}", "", table, "", "## Claims vs measured", "",
          *claims_table(variants), "", "## Figures", ""]
  body += [f"![{name}](figures/{path.name})" for name, path in paths.items()]
  report = directory / "report.md"
  report.write_text("\n".join(body) + "\n")
  return report, table
