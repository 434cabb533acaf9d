"""Attention temperature (model.temperature): each formula against a transcription of its
reference, its effect on the model (a scale of the queries, in the layers it names), SSMax's
learned scales, and the config's refusals."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from lcx import positions
from lcx.config import ConfigError, resolve
from lcx.model import ModelConfig, Transformer, token_losses
from lcx.model.temperature import TemperatureOptions, query_scale

P = np.arange(4096)


def test_logn_is_qwen_s_table():
  """Qwen's modeling code: logn_list = [log(i, seq_length) if i > seq_length else 1 for i in
  range(1, ...)], query t taking entry t."""
  seq_length = 512
  qwen = np.array([math.log(i, seq_length) if i > seq_length else 1 for i in range(1, 4097)])
  ours = query_scale(TemperatureOptions(kind="logn", length=seq_length), jnp.asarray(P)[None])
  np.testing.assert_allclose(np.asarray(ours)[0, :, 0], qwen, rtol=1e-6)


def test_llama4_is_transformers_attn_scales():
  """transformers' Llama 4: log(floor((cache_position + 1) / floor_scale) + 1) * attn_scale + 1."""
  floor_scale, attn_scale = 256, 0.1
  hf = np.log(np.floor((P + 1.0) / floor_scale) + 1.0) * attn_scale + 1.0
  ours = query_scale(TemperatureOptions(kind="llama4", beta=attn_scale, floor_scale=floor_scale),
                     jnp.asarray(P)[None])
  np.testing.assert_allclose(np.asarray(ours)[0, :, 0], hf, rtol=1e-6)
  assert hf[254] == 1.0 and hf[255] > 1.0


def test_ssmax_is_s_log_n_per_head_and_fixed_is_one_factor():
  s_H = jnp.array([0.2, 0.43, 1.0])
  ours = np.asarray(query_scale(TemperatureOptions(kind="ssmax"), jnp.asarray(P)[None], s_H))[0]
  np.testing.assert_allclose(ours, np.log(P + 1.0)[:, None] * np.asarray(s_H)[None], rtol=1e-6)
  fixed = query_scale(TemperatureOptions(kind="fixed", factor=1.3), jnp.asarray(P)[None])
  np.testing.assert_allclose(np.asarray(fixed), 1.3)


TOKENS = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
POS = jnp.broadcast_to(jnp.arange(16), (2, 16))
ROPE = positions.RopeOptions(original_length=16)


def _model(temperature=TemperatureOptions(), pattern=()):
  return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8,
                                 mlp_dim=64, max_len=32, position_options=ROPE,
                                 position_pattern=pattern, temperature=temperature),
                     rngs=nnx.Rngs(0))


@pytest.mark.parametrize("only_nope_layers", [False, True])
def test_a_temperature_scales_the_queries_of_the_layers_it_names(only_nope_layers):
  """A fixed factor f equals W_q scaled by f in the layers it applies to (RoPE then NoPE; with
  schemes=('none',) only the second, as Llama 4 does)."""
  pattern = (("rope", ROPE), ("none", None))
  schemes = ("none",) if only_nope_layers else ()
  hot = _model(TemperatureOptions(kind="fixed", factor=1.7, schemes=schemes), pattern)
  plain = _model(pattern=pattern)
  for layer, block in enumerate(plain.blocks):
    if not only_nope_layers or layer == 1:
      block.attn.wq[...] = block.attn.wq[...] * 1.7
  np.testing.assert_allclose(hot(TOKENS, POS), plain(TOKENS, POS), rtol=1e-5, atol=1e-5)
  assert not np.allclose(hot(TOKENS, POS), _model(pattern=pattern)(TOKENS, POS), atol=1e-4)


def test_ssmax_learns_a_scale_per_head_and_layer():
  model = _model(TemperatureOptions(kind="ssmax"))
  graphdef, params = nnx.split(model, nnx.Param)
  np.testing.assert_allclose(params["blocks"][0]["attn"]["ssmax_scale"][...], [0.43] * 4)
  loss = lambda p: token_losses(nnx.merge(graphdef, p)(TOKENS[:, :-1], POS[:, :-1]),
                                TOKENS[:, 1:]).mean()
  grads = jax.grad(loss)(params)
  assert all(float(jnp.abs(grads["blocks"][i]["attn"]["ssmax_scale"][...]).min()) > 0
             for i in range(2))


def _tiny(**temperature):
  c = pretrain.get_config("tiny")
  c.model.temperature.update(**temperature)
  return c


def test_the_config_fills_in_logn_s_length_and_refuses_what_cannot_work():
  assert resolve(_tiny(kind="logn"), 1).model.temperature.length == 128  # data.seq_len
  for fields, message in ((dict(kind="cold"), "kind='cold' is unknown; allowed: none, logn"),
                          (dict(kind="fixed", factor=0.0), "factor=0.0 must be positive"),
                          (dict(kind="llama4", floor_scale=0), "floor_scale=0 must be a positive"),
                          (dict(kind="ssmax", schemes=("none",)),
                           r"schemes=\('none',\) names a scheme no layer has; the layers' "
                           "schemes: rope")):
    with pytest.raises(ConfigError, match=f"config.model.temperature.{message}"):
      resolve(_tiny(**fields), 1)
