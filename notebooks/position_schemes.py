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
# # Position schemes, as lcx computes them
#
# Every figure here calls the pure functions in `lcx.positions` that the model itself uses:
# RoPE's rotation and what it does to attention scores (plain, context-extended, p-RoPE), xPos's
# decay, every scheme's bias (ALiBi's slopes; T5, KERPLE and FIRE as a trained run learned them,
# from `LCX_STUDY_DIR`, default `runs/extrapolation-cpu`), and the sinusoidal table.

# %%
import os
import pathlib

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from lcx import positions
from lcx.evaluate.loading import load_run

# lcx.evaluate draws to files (Agg); back to inline figures here
# %matplotlib inline

HEAD_DIM, TRAIN_LENGTH = 64, 128
STUDY = pathlib.Path(os.environ.get("LCX_STUDY_DIR", "runs/extrapolation-cpu"))

# %% [markdown]
# ## RoPE rotates each pair of dims by position x frequency
# One pair per panel: the fastest pair turns once every 2 pi tokens, the slowest barely moves over
# the training length.

# %%
inv_freq = positions.rope_inverse_frequencies(HEAD_DIM, 10000.0)
pair = jnp.zeros((1, TRAIN_LENGTH, 1, HEAD_DIM)).at[..., 0].set(1.0)  # unit vector in pair 0
pos = jnp.arange(TRAIN_LENGTH)[None]
fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
for ax, i in zip(axes, (0, 8, 31)):
  x = jnp.zeros((1, TRAIN_LENGTH, 1, HEAD_DIM)).at[..., i].set(1.0)
  rotated = positions.apply_rope(x, pos, inv_freq)[0, :, 0]
  ax.scatter(rotated[:, i], rotated[:, i + HEAD_DIM // 2], c=np.arange(TRAIN_LENGTH), s=6)
  ax.set(title=f"pair {i}: theta = {float(inv_freq[i]):.2g}", aspect="equal",
         xlim=(-1.1, 1.1), ylim=(-1.1, 1.1))
fig.tight_layout()

# %% [markdown]
# ## Scores depend on distance only, and scaling reshapes that dependence
# For q = k = all ones, the score at distance d is sum_i cos(theta_i d) over the rotary pairs.
# Linear interpolation stretches the curve by s; NTK-aware and YaRN keep the high frequencies.

# %%
distance = np.arange(0, 4 * TRAIN_LENGTH)
q = jnp.ones((1, 1, 1, HEAD_DIM))
fig, ax = plt.subplots(figsize=(8, 3.5))
for scaling in ("none", "linear", "ntk", "yarn"):
  cfg = positions.RopeOptions(scaling=scaling, factor=4.0, original_length=TRAIN_LENGTH)
  freqs, scale = positions.scaled_frequencies(HEAD_DIM, cfg, 4 * TRAIN_LENGTH)
  q0 = positions.apply_rope(q, jnp.zeros((1, 1)), freqs, scale=scale)[0, 0, 0]
  k = positions.apply_rope(jnp.ones((1, len(distance), 1, HEAD_DIM)), jnp.asarray(distance)[None],
                           freqs, scale=scale)[0, :, 0]
  ax.plot(distance, k @ q0 / HEAD_DIM, label=scaling)
ax.axvline(TRAIN_LENGTH, color="grey", linestyle=":")
ax.set(xlabel="distance m - n", ylabel="score / head_dim", title="RoPE score vs distance, s = 4")
ax.legend()

# %% [markdown]
# ## p-RoPE drops the slowest pairs, xPos damps the fast ones with distance
# p-RoPE (keep p) sets the frequencies of the slowest 1 - p of the pairs to zero: those dims
# carry no position. xPos multiplies pair i's share of a logit by zeta_i^(distance / gamma): fast
# pairs fade within a few gamma, the slowest hardly at all.

# %%
fig, (ax_f, ax_x) = plt.subplots(1, 2, figsize=(11, 3.5))
for keep in (1.0, 0.75, 0.25):
  cfg = positions.RopeOptions(keep=keep)
  freqs, _ = positions.scaled_frequencies(HEAD_DIM, cfg, TRAIN_LENGTH)
  ax_f.semilogy(np.arange(HEAD_DIM // 2), np.maximum(np.asarray(freqs), 1e-6), ".-",
                label=f"keep {keep:g}")
ax_f.set(xlabel="rotary pair", ylabel="theta (0 shown at 1e-6)", title="p-RoPE frequencies")
ax_f.legend()
zeta = np.asarray(positions.xpos_zeta(HEAD_DIM))
distance = np.arange(0, 4096, 16)
for i in (0, 8, 16, 31):
  ax_x.plot(distance, zeta[i] ** (distance / 512.0), label=f"pair {i}: zeta={zeta[i]:.2f}")
ax_x.set(xlabel="distance", ylabel="logit scale", title="xPos decay, gamma = 512")
ax_x.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# ## ALiBi: one linear penalty per head
# Slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ... (Press et al.).

# %%
heads = 8
slopes = positions.alibi_slopes(heads)
print("slopes:", np.round(np.asarray(slopes), 4))
p = jnp.arange(16)[None]
bias = positions.alibi_bias(p, p, slopes)[0]
causal = np.tril(np.ones((16, 16), bool))
fig, axes = plt.subplots(1, heads, figsize=(14, 2.2))
for h, ax in enumerate(axes):
  ax.imshow(np.where(causal, bias[h], np.nan), cmap="magma")
  ax.set(title=f"head {h}: m={float(slopes[h]):.3g}", xticks=[], yticks=[])
fig.tight_layout()

# %% [markdown]
# ## Sinusoidal table
# Computed for any position: the same function serves positions far beyond training.

# %%
table = positions.sinusoidal_table(jnp.arange(4 * TRAIN_LENGTH), HEAD_DIM)
fig, ax = plt.subplots(figsize=(8, 3))
ax.imshow(np.asarray(table).T, aspect="auto", cmap="RdBu")
ax.axvline(TRAIN_LENGTH, color="black", linestyle=":")
ax.set(xlabel="position", ylabel="dimension", title="sinusoidal positions (Vaswani et al.)")

# %% [markdown]
# ## Every scheme's bias, as a heatmap over (query i, key j) and against distance
# One row per registered scheme with a bias, first layer, four heads. Learned biases (T5, KERPLE,
# FIRE) come from the study's trained run of that scheme when there is one, otherwise from their
# initialization, which the title says. Right: the bias of the last query of 4x the training
# length against distance, every head, with the training length marked.

# %%
def scheme_of(name):
  """(the scheme as trained in the study, or freshly initialized; where it came from)."""
  run_dir = STUDY / name / "pretrain"
  if (run_dir / "config.json").exists():
    run = load_run(run_dir)
    return run.model.position, f"trained, step {run.step}"
  cfg = positions.PositionConfig(d_model=64, n_heads=4, head_dim=16, max_len=4 * TRAIN_LENGTH,
                                 n_layers=2)
  return positions.make(name, cfg, rngs=nnx.Rngs(0)), "at initialization"


# Biases that are functions of positions; one made from the data (FoX's) has no picture apart
# from a text: its gates are the layer's input's (docs/positions.md).
with_bias = [n for n in positions.available()
             if positions.bias_kind(n) is not None and not positions.bias_kind(n).rows]
fig, axes = plt.subplots(len(with_bias), 5, figsize=(15, 2.6 * len(with_bias)), squeeze=False)
window, far = 32, 4 * TRAIN_LENGTH
causal = np.tril(np.ones((window, window), bool))
for row, name in zip(axes, with_bias):
  scheme, origin = scheme_of(name)
  print(f"{name}: {origin}")
  near = np.asarray(scheme.bias_fn(0)(jnp.arange(window)[None], jnp.arange(window)[None]))[0]
  for h, ax in enumerate(row[:4]):
    ax.imshow(np.where(causal, near[h % near.shape[0]], np.nan), cmap="magma")
    ax.set(title=f"{name} head {h}", xticks=[], yticks=[])
  row[0].set_ylabel(origin, fontsize=8)
  keys = jnp.arange(far)[None]
  curve = np.asarray(scheme.bias_fn(0)(jnp.asarray([[far - 1]]), keys))[0, :, 0]
  row[4].plot(far - 1 - np.arange(far), curve.T, lw=1)
  row[4].axvline(TRAIN_LENGTH, color="grey", linestyle=":")
  row[4].set(xlabel="distance", title=f"{name}: bias vs distance")
fig.tight_layout()
