"""Per-layer position patterns (model.position_layers): layer i runs with entry i % len, with
its own scheme, options and kernel; scan, memory, decoding and the config's refusals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from lcx import memory, positions
from lcx.config import ConfigError, model_config, resolve
from lcx.model import ModelConfig, Transformer, token_losses

ROPE = positions.RopeOptions(original_length=32)
SECTIONS = {**{n: o() for n, o in positions.option_types().items()}, "rope": ROPE}
# Every scheme a layer can take (learned and sinusoidal act on the embeddings, for all layers).
LAYER_SCHEMES = [n for n in positions.available() if not positions.embeds(n)]


def _pattern(*entries):
  return tuple(positions.parse_layer(e, SECTIONS) for e in entries)


def _model(pattern=(), position="rope", **fields):
  cfg = dict(vocab_size=64, d_model=32, n_layers=4, n_heads=4, head_dim=8, mlp_dim=64,
             max_len=32, position=position, position_pattern=pattern,
             position_options=SECTIONS.get(position))
  cfg.update(fields)
  return Transformer(ModelConfig(**cfg), rngs=nnx.Rngs(0))


TOKENS = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
POS = jnp.broadcast_to(jnp.arange(16), (2, 16))


def test_each_layer_runs_with_its_entry_s_scheme_and_options():
  """Against single-scheme models with the same weights, layer by layer: RoPE, RoPE with base
  10^6 (Gemma 3's global layers), ALiBi, NoPE, repeated over 4 layers... of 8."""
  entries = ("rope", "rope:base=1000000", "alibi", "none")
  hybrid = _model(_pattern(*entries), n_layers=8)
  singles = {e: _model(position=name, n_layers=8,
                       position_options=options) for e, (name, options) in
             zip(entries, _pattern(*entries))}
  x = hybrid._embed(TOKENS, POS)
  for layer, block in enumerate(hybrid.blocks):
    x = block(x, POS, None, singles[entries[layer % 4]].position, layer)
  expected = hybrid.unembed(hybrid.final_norm(x))
  np.testing.assert_allclose(hybrid(TOKENS, POS), expected, rtol=1e-5, atol=1e-5)
  # and the entries do differ: RoPE's base matters, and NoPE is not RoPE
  other = _model(_pattern("rope", "rope", "alibi", "none"), n_layers=8)
  assert not np.allclose(other(TOKENS, POS), expected, atol=1e-4)


@pytest.mark.parametrize("name", LAYER_SCHEMES)
def test_a_one_entry_pattern_is_the_plain_model(name):
  np.testing.assert_allclose(_model(_pattern(name), position=name)(TOKENS, POS),
                             _model(position=name)(TOKENS, POS), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_memory", [False, True])
def test_scan_over_the_pattern_s_repeats_equals_the_loop(with_memory):
  """Values and gradients; with an XL memory each layer keeps its own."""
  fields = dict(memory="xl", segment_len=8,
                memory_options=memory.option_types()["xl"](length=8)) if with_memory else {}
  pattern = _pattern("rope", "t5")  # T5 has parameters of its own: their gradients too

  def loss_and_grads(scan):
    graphdef, params = nnx.split(_model(pattern, scan_layers=scan, **fields))
    loss = lambda p: token_losses(nnx.merge(graphdef, p)(TOKENS[:, :-1], POS[:, :-1]),
                                  TOKENS[:, 1:]).mean()
    return jax.value_and_grad(loss)(params)

  (loop_loss, loop_grads), (scan_loss, scan_grads) = loss_and_grads(False), loss_and_grads(True)
  np.testing.assert_allclose(scan_loss, loop_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               scan_grads, loop_grads)
  assert float(jnp.abs(loop_grads["position_layers"][1]["bias_table"][...]).sum()) > 0


def _tiny(**model):
  c = pretrain.get_config("tiny")
  c.model.update(**model)
  return c


def test_the_config_reads_a_pattern_and_refuses_what_it_cannot_run():
  c = resolve(_tiny(position_layers=("rope", "rope", "rope", "none"), n_layers=4), 1)
  assert c.model.position == "rope"
  assert [name for name, _ in model_config(c).position_pattern] == ["rope"] * 3 + ["none"]
  c = resolve(_tiny(position_layers=("alibi", "rope:base=1e6")), 1)
  assert c.model.position == "alibi" and model_config(c).position_pattern[1][1].base == 1e6
  allowed = ", ".join(LAYER_SCHEMES)
  for entries, message in (
      (("rope", "cope"), f"'cope' is not a position scheme; allowed: {allowed}"),
      (("learned", "none"), "'learned' adds to the embeddings, for every layer at once"),
      (("rope:bass=3",), "'bass=3' is not field=value of model.rope; its fields: base, "),
      (("rope:base=fast",), "base='fast' is not a float"),
      (("none:base=3",), "the scheme 'none' has no options"),
      (("rope:base=-1",), "config.model.rope.base=-1.0 must be"),
      (("rope", "none", "none"), None)):
    if message is None:  # three entries do not divide the tiny model's 2 layers under scan
      with pytest.raises(ConfigError, match="repeat every 3 layers, which must divide n_layers"):
        resolve(_tiny(position_layers=entries, scan_layers=True), 1)
      resolve(_tiny(position_layers=entries), 1)  # without scan, 2 layers take the first two
      continue
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
      resolve(_tiny(position_layers=entries), 1)


def test_every_entry_s_bias_must_suit_the_named_kernel():
  """native computes ALiBi's linear bias and no other: a pattern with FIRE is refused with it,
  and each entry gets its own kernel under auto."""
  resolve(_tiny(position_layers=("alibi", "none"), attention="native"), 1)
  with pytest.raises(ConfigError, match="model.attention='native' cannot take this position "
                     "scheme's bias"):
    resolve(_tiny(position_layers=("alibi", "fire"), attention="native"), 1)
  hybrid = _model(_pattern("alibi", "fire"), attention="auto")
  assert {b.attn.attend for b in hybrid.blocks[::2]} != {b.attn.attend for b in hybrid.blocks[1::2]}


def test_saved_runs_without_a_pattern_keep_their_parameters_where_they_were():
  paths = {"/".join(str(getattr(k, "key", k)) for k in p) for p, _ in
           jax.tree_util.tree_leaves_with_path(nnx.state(_model(position="t5"), nnx.Param))}
  assert any(p.startswith("position/") for p in paths)
  assert not any(p.startswith("position_layers") for p in paths)
  assert ModelConfig(vocab_size=8).layer_positions() == (("rope", None),)
