"""Memory mechanisms (lcx.memory) against straightforward references: segments with a carried
XL cache equal full attention where the cache holds everything, no gradient crosses into the
cache, segments never see another document's memory, and the config refuses what cannot work."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcx import memory
from lcx.config import ConfigError, resolve
from lcx.model import ModelConfig, Transformer, token_losses
from tests.conftest import ROOT  # noqa: F401  (puts the repository on sys.path)
from configs import pretrain

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64,
                   max_len=48)


def _model(**fields) -> Transformer:
  return Transformer(dataclasses.replace(BASE, **fields), rngs=nnx.Rngs(0))


def _stream(length=48, batch=2):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, length), 0, 64)
  return tokens, jnp.broadcast_to(jnp.arange(length), (batch, length))


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("position", ["rope", "alibi", "t5", "learned"])
def test_xl_over_segments_equals_full_attention_while_the_cache_holds_the_past(position, scan):
  """Two segments of 16 with a 16-token cache (and three with a 32-token one): every query sees
  every earlier token, as in the plain model, so the logits are the same."""
  plain = _model(position=position)
  tokens, pos = _stream()
  for length, cache in ((32, 16), (48, 32)):
    xl = _model(position=position, memory="xl", segment_len=16, scan_layers=scan,
                memory_options=memory.option_types()["xl"](length=cache))
    np.testing.assert_allclose(xl(tokens[:, :length], pos[:, :length]),
                               plain(tokens[:, :length], pos[:, :length]), atol=2e-5)


def test_xl_with_a_short_cache_forgets_what_left_it():
  """Three segments of 16, a cache of 16: the third segment no longer sees the first, so its
  logits differ from full attention's, while the first two segments' do not."""
  tokens, pos = _stream()
  full = _model()(tokens, pos)
  xl = _model(memory="xl", segment_len=16)(tokens, pos)
  np.testing.assert_allclose(xl[:, :32], full[:, :32], atol=2e-5)
  assert float(jnp.abs(xl[:, 32:] - full[:, 32:]).max()) > 1e-2


def test_no_gradient_crosses_into_the_xl_cache():
  """The loss of the second segment through XL's cache: the embeddings of tokens seen only in
  the first segment get no gradient (the cache is a stop-gradient), unlike full attention."""
  first = jnp.tile(jnp.arange(16), (2, 1))  # tokens 0-15, then 16-63 only
  second = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 16, 64)
  tokens, pos = jnp.concatenate([first, second], axis=1), _stream(32)[1]

  def embedding_grad(model):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens, pos)
      return token_losses(logits[:, 16:-1], tokens[:, 17:]).mean()
    return jax.grad(loss)(params)["embedding"][...]

  # Untied embeddings: the output layer would otherwise reach every row.
  xl = embedding_grad(_model(memory="xl", segment_len=16, tie_embeddings=False))
  full = embedding_grad(_model(tie_embeddings=False))
  assert float(jnp.abs(xl[:16]).max()) == 0.0
  assert float(jnp.abs(full[:16]).max()) > 1e-6


def test_segments_do_not_see_another_documents_memory():
  """A document that starts at the second segment (positions restart, a new segment id): its
  logits through XL are those of the document alone, as if nothing came before."""
  tokens, pos = _stream(32)
  pos = pos.at[:, 16:].add(-16)
  segment_ids = jnp.concatenate([jnp.ones((2, 16), jnp.int32), 2 * jnp.ones((2, 16), jnp.int32)],
                                axis=1)
  xl = _model(memory="xl", segment_len=16)
  np.testing.assert_allclose(xl(tokens, pos, segment_ids)[:, 16:],
                             _model()(tokens[:, 16:], pos[:, 16:]), atol=2e-5)


def test_memory_none_with_segments_is_the_fixed_window_baseline():
  """memory=none with segment_len: each segment attends within itself only; segment_len 0 (or
  the whole length) is the plain model."""
  tokens, pos = _stream(32)
  plain, windowed = _model(), _model(segment_len=16)
  np.testing.assert_allclose(windowed(tokens, pos)[:, 16:], plain(tokens[:, 16:], pos[:, 16:]),
                             atol=2e-5)
  np.testing.assert_allclose(_model(segment_len=32)(tokens, pos), plain(tokens, pos), atol=0)


def test_a_length_that_is_not_a_multiple_of_the_segment_is_padded_and_cut():
  tokens, pos = _stream(40)
  xl = _model(memory="xl", segment_len=16, memory_options=memory.option_types()["xl"](length=32))
  np.testing.assert_allclose(xl(tokens, pos), _model()(tokens, pos), atol=2e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(memory="xl"), "memory='xl' carries a state between segments; set "
                        "config.model.segment_len"),
    (dict(memory="kv"), "config.model.memory='kv' is not allowed; allowed: none, xl"),
    (dict(segment_len=1000), r"segment_len=1000 must be in \[0, data.seq_len=128\]"),
    (dict(memory="xl", segment_len=32, xl=dict(length=-1)), "model.xl.length=-1 must be >= 0"),
])
def test_the_config_refuses_a_memory_that_cannot_work(fields, message):
  c = pretrain.get_config("tiny")
  c.unlock()
  for name, value in fields.items():
    if isinstance(value, dict):
      c.model[name].update(value)
    else:
      c.model[name] = value
  with pytest.raises(ConfigError, match=message):
    resolve(c, 1)
