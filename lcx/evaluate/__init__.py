"""Extrapolation evaluation: perplexity vs length, sliding windows, loss by position, and
the retrieval suite (lcx.retrieval) scored by greedy decoding and by likelihood ranking.

`python -m lcx.evaluate --workdir RUN` or `evaluate_run(workdir, overrides, EvalOptions(...))`.
"""
from lcx.evaluate.runner import EvalOptions, evaluate, evaluate_run, write_outputs

__all__ = ["EvalOptions", "evaluate", "evaluate_run", "write_outputs"]
