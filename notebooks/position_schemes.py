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
# RoPE's rotation and what it does to attention scores (plain and context-extended), ALiBi's
# per-head bias, and the sinusoidal table.

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from lcx import positions

HEAD_DIM, TRAIN_LENGTH = 64, 128

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
  cfg = positions.RopeConfig(scaling=scaling, factor=4.0, original_length=TRAIN_LENGTH)
  freqs, scale = positions.scaled_frequencies(HEAD_DIM, cfg, 4 * TRAIN_LENGTH)
  q0 = positions.apply_rope(q, jnp.zeros((1, 1)), freqs, scale=scale)[0, 0, 0]
  k = positions.apply_rope(jnp.ones((1, len(distance), 1, HEAD_DIM)), jnp.asarray(distance)[None],
                           freqs, scale=scale)[0, :, 0]
  ax.plot(distance, k @ q0 / HEAD_DIM, label=scaling)
ax.axvline(TRAIN_LENGTH, color="grey", linestyle=":")
ax.set(xlabel="distance m - n", ylabel="score / head_dim", title="RoPE score vs distance, s = 4")
ax.legend()

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
