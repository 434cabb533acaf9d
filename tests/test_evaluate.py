"""Evaluation: numbers on cases with known answers, window bookkeeping, and the
pretrain -> evaluate -> fine-tune -> evaluate path end to end."""
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from lcx.data.tokenizers import ByteTokenizer
from lcx.evaluate import EvalOptions, evaluate_run
from lcx.evaluate import perplexity as ppl
from lcx.evaluate.tables import format_table
from lcx.evaluate.scoring import DoesNotFit, Scorer
from lcx.metrics import read_jsonl
from lcx.model import ModelConfig, Transformer
from lcx.sharding import make_mesh
from lcx.train import train_and_evaluate
from lcx.runs import layout
from tests.conftest import ROOT

RULES = (("batch", ("data", "fsdp")),)


def _documents(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [np.concatenate([[257], rng.integers(0, 256, n - 1)]).astype(np.int32) for n in lengths]


def test_common_segments_score_the_same_text_at_every_length():
  docs = _documents([100, 700, 1025, 3000])
  segments = ppl.common_segments(docs, 512, max_tokens=10_000)
  assert [len(s) for s in segments] == [513, 1025, 2561]
  for length in (64, 128, 256, 512):
    windows = np.concatenate([ppl.non_overlapping_windows(s, length) for s in segments])
    # Every target of every segment is scored once: the same 4096 targets at each length.
    assert windows.shape == (4096 // length, length + 1)
    np.testing.assert_array_equal(np.concatenate([w[1:] for w in windows]),
                                  np.concatenate([s[1:] for s in segments]))
  assert sum(len(s) - 1 for s in ppl.common_segments(docs, 512, max_tokens=1024)) == 1024


@pytest.mark.parametrize("targets, length, stride", [(1000, 128, 64), (1024, 256, 256),
                                                     (129, 128, 10), (777, 100, 33)])
def test_sliding_windows_score_every_target_exactly_once(targets, length, stride):
  segment = np.arange(targets + 1)
  windows, new = ppl.sliding_windows(segment, length, stride)
  assert windows.shape[1] == length + 1
  scored = np.concatenate([w[length + 1 - n:] for w, n in zip(windows, new)])
  np.testing.assert_array_equal(scored, np.arange(1, targets + 1))
  # After the first window each scored token sees at least length - stride tokens before it.
  assert new[0] == length and all(n <= stride for n in new[1:])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
  """A model with all-zero parameters gives uniform logits: loss = ln V exactly."""
  cfg = ModelConfig(vocab_size=320, d_model=16, n_layers=1, n_heads=2, head_dim=8, mlp_dim=32,
                    position="alibi")
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  model = nnx.merge(graphdef, jax.tree.map(jax.numpy.zeros_like, params))
  scorer = Scorer(model, make_mesh(dict(data=-1, fsdp=1, tensor=1)), RULES)
  segments = ppl.common_segments(_documents([600, 900]), 256, 4096)
  tok = ByteTokenizer()
  for length in (64, 256):
    result = ppl.evaluate_non_overlapping(scorer.losses, segments, length, tok)
    assert result["loss"] == pytest.approx(math.log(320), rel=1e-6)
    assert result["perplexity"] == pytest.approx(320, rel=1e-5)
    assert result["tokens"] == 1280
    # Random bytes contain no special tokens: one byte per target.
    assert result["bits_per_byte"] == pytest.approx(math.log2(320), rel=1e-6)
    assert all(v == pytest.approx(math.log(320)) for v in result["by_position"]["loss"])
    sliding = ppl.evaluate_sliding(scorer.losses, segments, length, length // 4, tok)
    assert sliding["tokens"] == 1280 and sliding["loss"] == pytest.approx(math.log(320), rel=1e-6)


def test_a_hand_computed_perplexity():
  """Losses that depend on the target: the mean, perplexity and bits per byte by hand."""
  segment = np.array([257, 1, 2, 1, 2, 1, 2, 1, 2], np.int32)  # 8 targets
  per_target = {1: 0.5, 2: 1.5}
  losses = lambda w: np.vectorize(per_target.get)(w[:, 1:]).astype(np.float32)
  result = ppl.evaluate_non_overlapping(losses, [segment], 4, ByteTokenizer())
  assert result["loss"] == pytest.approx(1.0) and result["perplexity"] == pytest.approx(math.e)
  assert result["bits_per_byte"] == pytest.approx(8 / math.log(2) / 8)
  assert result["by_position"]["loss"][0] == pytest.approx(0.5)
  # A model that runs segments of 2: the mean loss of each segment of the window.
  targets = np.array([257, 1, 1, 2, 2, 1, 1, 2, 2], np.int32)
  by_segment = ppl.evaluate_non_overlapping(losses, [targets], 4, ByteTokenizer(),
                                            segment_len=2)["by_segment"]
  assert by_segment == {"segment_len": 2, "loss": [pytest.approx(0.5), pytest.approx(1.5)]}


def test_long_windows_take_their_logits_a_slice_at_a_time(monkeypatch):
  """Past LOGITS_SLICE positions the head runs on slices of the hidden states (a 32K x 49K logit
  array would not fit): the same losses and predictions as the whole logits, a ragged last slice
  included."""
  from lcx.model import transformer
  cfg = ModelConfig(vocab_size=320, d_model=16, n_layers=1, n_heads=2, head_dim=8, mlp_dim=32)
  scorer = Scorer(Transformer(cfg, rngs=nnx.Rngs(0)), make_mesh(dict(data=-1, fsdp=1, tensor=1)),
                  RULES)
  windows = np.random.default_rng(0).integers(0, 320, (8, 101)).astype(np.int32)
  whole, whole_bytes = scorer.run(windows), scorer.bytes_per_row(4096)
  monkeypatch.setattr(transformer, "LOGITS_SLICE", 16)
  sliced_scorer = Scorer(Transformer(cfg, rngs=nnx.Rngs(0)),
                         make_mesh(dict(data=-1, fsdp=1, tensor=1)), RULES)
  sliced = sliced_scorer.run(windows)
  np.testing.assert_allclose(sliced[0], whole[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(sliced[1], whole[1])
  assert sliced_scorer.bytes_per_row(4096) < whole_bytes


def test_an_evaluation_too_big_for_memory_fails_clearly():
  cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, head_dim=8, mlp_dim=32)
  scorer = Scorer(Transformer(cfg, rngs=nnx.Rngs(0)), make_mesh(dict(data=-1, fsdp=1, tensor=1)),
                  RULES, memory_fraction=1e-9)
  with pytest.raises(DoesNotFit, match=r"length 4096 needs about .* GiB .* evaluate shorter"):
    scorer.losses(np.zeros((1, 4097), np.int32))


def test_pretrain_evaluate_finetune_evaluate(tiny_config, tmp_path):
  tiny_config.train.steps = 30
  tiny_config.checkpoint.every_steps = 30
  pretrain_dir = tmp_path / "rope"
  train_and_evaluate(tiny_config, pretrain_dir)
  options = EvalOptions(max_tokens=1024, trials=2, depths=(0.5,),
                        tasks=("passkey", "niah_multikey", "babi_qa3"), longppl=True,
                        retrieval_lengths=(32, 64, 128, 512))
  results, paths = evaluate_run(pretrain_dir, (), options, progress=False)
  assert [r["length"] for r in results["perplexity"]] == [32, 64, 128, 256, 512]
  assert all(r["tokens"] == 1024 for r in results["perplexity"])
  assert results["checkpoint_step"] == 30 and results["name"] == "base"
  for key in ("json", "perplexity_png", "by_position_png", "passkey_png", "niah_multikey_png",
              "retrieval_png"):
    assert paths[key].exists() and paths[key].stat().st_size > 1000
  assert json.loads(paths["json"].read_text())["perplexity"][0]["loss"] > 0
  # LongPPL past the pretraining length (32 tokens): key tokens by the model's own losses
  assert "longppl" not in results["perplexity"][0]
  for row in results["perplexity"][1:]:
    record = row["longppl"]
    assert record["window"] == 32 and 0 <= record["key_fraction"] < 1
    assert record["longppl"] is None or record["key_loss"] < 2.0
  assert "LongPPL | key tokens" in format_table(results)
  # The prompts need more than 32 tokens: those cells are not applicable, not an error.
  grid = results["retrieval"]["niah_multikey/python"]
  assert grid["lengths"] == [32, 64, 128, 512]  # --retrieval_lengths: not perplexity's 256
  assert grid["exact"][0] == [None] and "needs 84 tokens" in grid["not_applicable"]["32"]
  assert all(0 <= a <= 1 for row in grid["exact"][2:] + grid["ranked"][2:] for a in row)
  # bAbI's qa3 (prose only: no python grid), scored where its story fits
  assert "babi_qa3/python" not in results["retrieval"] and paths["babi_qa3_png"].exists()
  babi = results["retrieval"]["babi_qa3/prose"]
  assert babi["exact"][0] == [None] and babi["exact"][-1][0] in (0.0, 0.5, 1.0)

  # Zero-shot YaRN from the command line.
  cli = subprocess.run(
      [sys.executable, "-m", "lcx.evaluate", "--workdir", str(pretrain_dir), "--lengths", "32,128",
       "--max_tokens", "512", "--trials", "0", "--config.model.rope.scaling=yarn",
       "--config.model.rope.factor=4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-2000:]
  assert "| 128 | 4 |" in cli.stdout
  yarn = json.loads((pretrain_dir / layout.EVAL / "rope.scaling-yarn_rope.factor-4.json").read_text())
  assert yarn["config"]["model"]["rope"]["scaling"] == "yarn"

  # Fine-tune at 4x with PI, then evaluate: multiples stay relative to the pretraining length.
  from configs import finetune
  ft = finetune.get_config("linear")
  ft.unlock()
  ft.data.update(data_dir=tiny_config.data.data_dir)
  ft.train.update(steps=4, log_every=2, peak_flops=1e12)
  ft.wandb.mode = "disabled"
  ft.init_from = str(pretrain_dir)
  ft_dir = tmp_path / "rope-pi"
  summary = train_and_evaluate(ft, ft_dir)
  saved = json.loads((ft_dir / layout.CONFIG).read_text())
  assert saved["model"]["d_model"] == 32 and saved["data"]["seq_len"] == 512  # architecture kept
  assert saved["model"]["rope"]["original_length"] == 32 and saved["init_from"] == str(pretrain_dir)
  assert summary["init_from"]["step"] == 30 and summary["tokens_seen"] == 4 * 8 * 512
  ft_results, _ = evaluate_run(ft_dir, (), EvalOptions(lengths=(32, 128), max_tokens=512,
                                                       trials=0), progress=False)
  assert ft_results["base_length"] == 32 and ft_results["perplexity"][1]["multiple"] == 4

  # Asked to, a fine-tune continues the AdamW moments too (the schedule still restarts): its
  # first update then differs from the fresh optimizer's.
  ft.init_optimizer = True
  train_and_evaluate(ft, tmp_path / "rope-pi-moments")
  fresh = read_jsonl(ft_dir / layout.METRICS)[0]
  continued = read_jsonl(tmp_path / "rope-pi-moments" / layout.METRICS)[0]
  assert continued["step"] == fresh["step"] == 2
  assert continued["learning_rate"] == pytest.approx(fresh["learning_rate"])
  assert continued["loss"] != pytest.approx(fresh["loss"], rel=1e-6)


def test_learned_positions_are_not_applicable_beyond_their_table(tiny_config, tmp_path):
  tiny_config.model.position = "learned"
  tiny_config.train.steps = 2
  train_and_evaluate(tiny_config, tmp_path / "learned")
  results, _ = evaluate_run(tmp_path / "learned", ("wandb.mode=offline",), EvalOptions(
      lengths=(32, 64), max_tokens=256, trials=0), progress=False)
  assert "loss" in results["perplexity"][0] and results["name"] == "base"
  assert "model.max_len=32" in results["perplexity"][1]["not_applicable"]
  assert "model.max_len=32" in results["sliding"][1]["not_applicable"]
  # The evaluation went to W&B as its own offline run, with the table and the figures.
  runs = list((tmp_path / "learned" / layout.EVAL / "wandb").glob("offline-run-*/run-*.wandb"))
  wandb_cli = pathlib.Path(sys.executable).parent / "wandb"
  dump = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(runs[0])],
                        capture_output=True, text=True, timeout=120, check=True).stdout
  assert "perplexity_by_length" in dump and "plots/perplexity_png" in dump
  assert '"job_type":"evaluate"' in dump


def test_longppl_scores_each_target_with_the_short_window_and_keeps_the_key_tokens():
  """Short-context losses (stride 1: exactly `window` tokens of context) equal each target
  scored alone with its last `window` tokens; key tokens are those the thresholds pick."""
  from lcx.evaluate.longppl import LongPPL
  cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, head_dim=8, mlp_dim=32)
  scorer = Scorer(Transformer(cfg, rngs=nnx.Rngs(0)), make_mesh(dict(data=-1, fsdp=1, tensor=1)),
                  RULES)
  windows = np.random.default_rng(0).integers(0, 64, (2, 25)).astype(np.int32)
  measure = LongPPL(window=8, stride=1)
  short = measure.short_losses(scorer.losses, windows)
  full = scorer.losses(windows)
  np.testing.assert_allclose(short[:, :8], full[:, :8], rtol=1e-5)  # the whole window is short
  for t in (8, 15, 23):  # target t: token t + 1 after tokens t - 7 .. t
    alone = scorer.losses(windows[:, t - 7:t + 2])[:, -1]
    np.testing.assert_allclose(short[:, t], alone, rtol=1e-5)
  full = np.array([[0.5, 1.9, 2.5, 0.1]])
  short = np.array([[3.0, 3.0, 5.0, 2.0]])  # drops of 2.5, 1.1, 2.5, 1.9
  np.testing.assert_array_equal(LongPPL(window=8).key_tokens(full, short),
                                [[True, False, False, False]])  # (2.5 is above the ceiling)
  with pytest.raises(ValueError, match="must be positive"):
    LongPPL(window=8, drop=0)
