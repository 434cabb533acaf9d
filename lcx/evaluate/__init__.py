"""Extrapolation evaluation: perplexity vs length, sliding windows, loss by position, and
the retrieval suite (lcx.data.retrieval) scored by greedy decoding and by likelihood ranking.

`python -m lcx.evaluate --workdir RUN` or `evaluate_run(workdir, overrides, EvalOptions(...))`.
The evaluation's parts are imported when first asked for, so that readers of its records
(records.py, plots.py: the report) load no JAX.
"""
__all__ = ["EvalOptions", "evaluate", "evaluate_run", "write_outputs"]


def __getattr__(name):
  if name in __all__:
    from lcx.evaluate import runner
    return getattr(runner, name)
  raise AttributeError(f"module 'lcx.evaluate' has no attribute {name!r}")
