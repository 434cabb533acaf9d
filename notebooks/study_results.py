# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Results of a study
#
# Loads a study directory written by `python -m lcx.sweep` (set `LCX_STUDY_DIR`, default
# `runs/extrapolation-cpu`, the `make demo` study) and rebuilds the report's numbers and figures
# as Python objects to take further.

# %%
import os
import pathlib

import matplotlib.pyplot as plt

from lcx import report
from lcx.evaluate.plots import log_scale_length_axis

study = pathlib.Path(os.environ.get("LCX_STUDY_DIR", "runs/extrapolation-cpu"))
variants, _ = report.collect(study)
print(f"{len(variants)} evaluated variants in {study}")

# %% [markdown]
# ## The report's tables

# %%
print(report.tables(variants))

# %% [markdown]
# ## Perplexity against evaluation length, one line per variant

# %%
look = report.looks(variants)  # the colour and marker each variant has in every figure
fig, ax = plt.subplots(figsize=(8, 4.5))
for v in variants:
  rows = [r for r in v.results["perplexity"] if "perplexity" in r]
  ax.plot([r["length"] for r in rows], [r["perplexity"] for r in rows], label=v.label,
          **look[v.label])
log_scale_length_axis(ax, sorted({r["length"] for v in variants
                                  for r in v.results["perplexity"]}))
ax.set(xlabel="evaluation length (tokens)", ylabel="perplexity")
ax.legend(fontsize=7)

# %% [markdown]
# ## Every figure of the report, written to the study's figures/ folder

# %%
paths = report.figures(variants, study / "figures", report.study_name(variants, study))
sorted(p.name for p in paths.values())
