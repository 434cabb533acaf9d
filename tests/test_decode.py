"""The KV-cache decode path against the full forward: logits token by token, greedy decoding, and
answer likelihoods, for every scheme family and attention kernel."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcx import positions
from lcx.attention import native
from lcx.evaluate.decode import Decoder
from lcx.evaluate.scoring import Scorer
from lcx.model import ModelConfig, Transformer, token_losses
from lcx.model.temperature import TemperatureOptions
from lcx.sharding import make_mesh

RULES = (("batch", ("data", "fsdp")),)
VOCAB = 64


def _model(position="rope", scaling="none", attention_impl="dense", **fields):
  rope = positions.RopeOptions(scaling=scaling, factor=4.0, original_length=16)
  if position == "hybrid":  # a per-layer pattern: RoPE then ALiBi, each with its own kernel
    position, fields["position_pattern"] = "rope", (("rope", rope), ("alibi", None))
  cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64,
                    position=position, max_len=64, attention=attention_impl, attention_block=16,
                    position_options=rope if position == "rope" else None, **fields)
  return Transformer(cfg, rngs=nnx.Rngs(0))


def _full_logits(model, tokens):
  positions_BL = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(model(jnp.asarray(tokens), positions_BL))


# Every scheme, through dense and blockwise in turn; RoPE's length-dependent scalings as well.
CASES = [(name, "none", ("dense", "blockwise")[i % 2])
         for i, name in enumerate(positions.available())]
CASES += [("rope", "dynamic_ntk", "blockwise"), ("rope", "yarn", "dense")]
# grouped-query attention: the cache holds the 2 key/value heads of 4 query heads
CASES += [("rope", "none", "blockwise-gqa"), ("t5", "none", "dense-gqa")]
CASES += [("hybrid", "dynamic_ntk", "blockwise"), ("rope", "none", "dense-temperature")]
CASES += [("rope", "none", "dense-window"), ("alibi", "none", "blockwise-window"),
          ("rope", "none", "blockwise-chunk"), ("fox", "none", "blockwise-window")]
if native.unavailable_reason() is None:
  CASES += [("alibi", "none", "native"), ("rope", "none", "native"),
            ("alibi", "none", "native-gqa")]


@pytest.mark.parametrize("position, scaling, attention_impl", CASES)
def test_prompt_then_one_token_at_a_time_gives_the_full_forward_logits(position, scaling,
                                                                       attention_impl):
  attention_impl, _, variant = attention_impl.partition("-")
  gqa = variant == "gqa"
  fields = {"n_kv_heads": 2} if gqa else {}
  if variant == "temperature":  # Llama 4's, stepping up every 8 positions
    fields["temperature"] = TemperatureOptions(kind="llama4", floor_scale=8, beta=0.5)
  if variant == "window":  # a sliding window in the first layer, the second global
    fields.update(window=8, attention_layers=("local", "global"))
  if variant == "chunk":
    fields["chunk"] = 16
  model = _model(position, scaling, attention_impl, **fields)
  if gqa:
    assert model.empty_caches(3, 8)[0].k_BSHK.shape == (3, 8, 2, 8)
  if variant in ("window", "chunk"):  # a local layer's cache holds its window only
    assert model.empty_caches(3, 45)[0].k_BSHK.shape[1] == (8 if variant == "window" else 16)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (3, 45)).astype(np.int32)
  window, prompt = tokens.shape[1], 37
  expected = _full_logits(model, tokens)
  caches = model.empty_caches(3, window)
  pos = np.broadcast_to(np.arange(window, dtype=np.int32), tokens.shape)
  logits, caches = model.extend(jnp.asarray(tokens[:, :prompt]), jnp.asarray(pos[:, :prompt]),
                                caches)
  got = [np.asarray(logits)]
  for i in range(prompt, window):
    logits, caches = model.extend(jnp.asarray(tokens[:, i:i + 1]), jnp.asarray(pos[:, i:i + 1]),
                                  caches)
    got.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(got, axis=1), expected, atol=2e-5, rtol=2e-5)


# A plain model (decoded through its KV cache) and one streaming segments of 8 tokens with an
# XL memory (decoded by full forwards over the window, segment by segment).
@pytest.fixture(scope="module", params=["cache", "xl-segments"])
def decoder(request):
  model = _model("rope") if request.param == "cache" else _model("rope", memory="xl",
                                                                 segment_len=8)
  return model, Decoder(Scorer(model, make_mesh(dict(data=-1, fsdp=1, tensor=1)), RULES))


def test_greedy_decoding_equals_repeated_full_forwards(decoder):
  model, dec = decoder
  prompts = np.random.default_rng(1).integers(0, VOCAB, (5, 30)).astype(np.int32)
  got = dec.greedy(prompts, steps=6)
  tokens = prompts
  for _ in range(6):
    tokens = np.concatenate([tokens, _full_logits(model, tokens)[:, -1].argmax(-1)[:, None]], 1)
  np.testing.assert_array_equal(got, tokens[:, 30:])


def test_answer_scores_equal_the_full_forward(decoder):
  model, dec = decoder
  rng = np.random.default_rng(2)
  prompts = rng.integers(0, VOCAB, (3, 20)).astype(np.int32)
  answers = rng.integers(0, VOCAB, (3, 4, 5)).astype(np.int32)
  # answer 2 of each prompt is what greedy decoding produces: teacher forcing must say so
  answers[:, 2] = dec.greedy(prompts, 5)
  mask = np.ones(answers.shape, np.float32)
  mask[:, 1, 3:] = 0  # a shorter answer: its last two tokens are padding
  logprobs, forced = dec.answer_scores(prompts, answers, mask)
  for m in range(4):
    full = np.concatenate([prompts, answers[:, m]], axis=1)
    logits = _full_logits(model, full[:, :-1])
    losses = np.asarray(token_losses(jnp.asarray(logits), jnp.asarray(full[:, 1:])))[:, 19:]
    np.testing.assert_allclose(logprobs[:, m], -(losses * mask[:, m]).sum(-1), rtol=1e-5,
                               atol=1e-4)
    argmax_right = (logits[:, 19:].argmax(-1) == full[:, 20:]) | (mask[:, m] == 0)
    np.testing.assert_array_equal(forced[:, m], argmax_right.all(-1))
  assert forced[:, 2].all() and not forced[:, 0].any()


def test_the_rest_of_a_prompt_read_before_its_answers_scores_as_the_whole_prompt(decoder):
  """Retrieval scores prompts of one length together whatever their answers' lengths: each is
  read up to the shortest prompt's end and its rest comes before every answer, masked. The same
  likelihoods and teacher-forced matches as the whole prompt."""
  _, dec = decoder
  rng = np.random.default_rng(3)
  prompts = rng.integers(0, VOCAB, (2, 24)).astype(np.int32)
  answers = rng.integers(0, VOCAB, (2, 3, 4)).astype(np.int32)
  answers[:, 1] = dec.greedy(prompts, 4)
  mask = np.ones(answers.shape, np.float32)
  whole = dec.answer_scores(prompts, answers, mask)
  rest = np.repeat(prompts[:, None, 20:], 3, axis=1)
  split = dec.answer_scores(prompts[:, :20], np.concatenate([rest, answers], axis=2),
                            np.concatenate([np.zeros(rest.shape, np.float32), mask], axis=2))
  np.testing.assert_allclose(split[0], whole[0], rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(split[1], whole[1])
  assert whole[1][:, 1].all()



def test_retrieval_on_a_memory_run_reports_accuracy_by_needle_distance():
  """retrieval_grid on a model streaming segments: every trial lands in one distance (segments of
  the model's segment_len before the question), and the distances' trials add up to the grid's."""
  from lcx.data import retrieval
  from lcx.data.tokenizers import ByteTokenizer
  from lcx.evaluate.retrieval import retrieval_grid
  tokenizer = ByteTokenizer()
  cfg = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64,
                    max_len=128, attention="dense", memory="xl", segment_len=32)
  decoder = Decoder(Scorer(Transformer(cfg, rngs=nnx.Rngs(0)),
                           make_mesh(dict(data=-1, fsdp=1, tensor=1)), RULES))
  text = retrieval.TextHaystack(tokenizer.encode("".join(
      f"    value_{i:04d} = f({i:4d})\n" for i in range(400))))
  grid = retrieval_grid(decoder, tokenizer, "passkey", "python", [128], [0.0, 1.0], 2, text,
                        distance_unit=cfg.segment_len)
  distances = grid["by_distance"]["distances"]
  assert grid["by_distance"]["unit"] == 32
  assert sum(cell["trials"] for cell in distances.values()) == 4
  assert max(map(int, distances)) >= 2 and min(map(int, distances)) <= 1  # depth 0 vs 1
  assert "by_distance" not in retrieval_grid(decoder, tokenizer, "passkey", "python", [128],
                                             [0.0], 1, text)
  # the training mixture's keys and values, asked for
  assert retrieval_grid(decoder, tokenizer, "passkey", "python", [128], [0.0], 1, text,
                        space=retrieval.TRAIN)["space"] == "train"
