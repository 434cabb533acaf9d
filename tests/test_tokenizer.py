"""SentencePiece tokenizers: training (python -m lcx.tokenizer) reproducible and lossless on the
corpus, a tiny subword run that trains, evaluates at 1x-16x with bits per byte and runs the
retrieval suite, and the refusals (missing, unreadable or changed model file, a fine-tune with
another tokenizer, a vocabulary that does not fit)."""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lcx import config as config_lib
from lcx.data.sources import Documents
from lcx.data.tokenizers import SentencePieceTokenizer, make_tokenizer
from lcx import tokenizer as tokenizer_training
from lcx.runs import layout
from tests.conftest import ROOT, make_tiny_config

VOCAB = 1024


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, data_dir):
  """A 1,024-piece BPE model trained by the command line on the bundled corpus."""
  out = tmp_path_factory.mktemp("tokenizer") / "sp1k.model"
  done = subprocess.run(
      [sys.executable, "-m", "lcx.tokenizer", "train", f"--config.data.data_dir={data_dir}",
       f"--vocab_size={VOCAB}", "--documents=300", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"--config.data.tokenizer=sentencepiece:{out}" in done.stdout
  return out


def test_training_is_reproducible_and_lossless(model_file, data_dir):
  docs = Documents("pystdlib", "train", data_dir=data_dir)
  record = json.loads(model_file.with_name(model_file.name + ".json").read_text())
  assert record["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
  assert record["vocab_size"] == VOCAB and record["documents"] == min(300, len(docs))
  assert record["validation_bytes_per_token"] > 1.5  # subwords: more than a byte per token
  again = tokenizer_training.train(docs, vocab_size=VOCAB, model_type="bpe", documents=300, seed=0,
                              threads=8)
  assert again == model_file.read_bytes()  # the same sample and flags: the same file
  other_seed = tokenizer_training.train(docs, vocab_size=VOCAB, model_type="bpe", documents=300,
                                   seed=1, threads=8)
  assert other_seed != again
  tokenizer = SentencePieceTokenizer(str(model_file))
  assert tokenizer.vocab_size == VOCAB and tokenizer.eos_id == 1
  validation = Documents("pystdlib", "validation", data_dir=data_dir)
  for i in range(min(20, len(validation))):
    text = validation[i]
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.max() < VOCAB
    assert tokenizer.decode(ids).encode("utf-8") == text  # byte for byte
    assert tokenizer.byte_length(ids) == len(text)  # bits per byte count the corpus's bytes
  # the end-of-sequence piece stands for no text
  assert tokenizer.byte_length([tokenizer.eos_id]) == 0 and tokenizer.decode([1]) == ""


def test_a_subword_run_trains_evaluates_and_retrieves(model_file, data_dir, tmp_path):
  from lcx.evaluate import EvalOptions, evaluate_run
  from lcx.train import train_and_evaluate
  c = make_tiny_config(data_dir)
  c.data.tokenizer = f"sentencepiece:{model_file}"
  c.data.seq_len = 64
  c.train.steps = 8
  c.checkpoint.every_steps = 8
  workdir = tmp_path / "run"
  train_and_evaluate(c, workdir)
  saved = json.loads((workdir / layout.CONFIG).read_text())
  assert saved["data"]["tokenizer"] == f"sentencepiece:{model_file}"
  assert saved["data"]["tokenizer_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
  assert saved["model"]["vocab_size"] >= VOCAB
  results, _ = evaluate_run(workdir, (), EvalOptions(
      max_tokens=512, trials=1, tasks=("passkey", "variable_tracking"), styles=("python",),
      depths=(0.5,)), progress=False)
  rows = results["perplexity"]
  assert [r["multiple"] for r in rows] == [1, 2, 4, 8, 16]
  for r in rows:  # bits per byte from the pieces' bytes: below the per-token bits
    bits_per_token = r["loss"] / np.log(2)
    assert 0 < r["bits_per_byte"] < bits_per_token
  grid = results["retrieval"]["passkey/python"]
  assert grid["lengths"] == [64 * m for m in (1, 2, 4, 8, 16)]


def test_model_files_that_cannot_serve_are_refused(model_file, data_dir, tmp_path):
  c = make_tiny_config(data_dir)
  c.data.tokenizer = f"sentencepiece:{tmp_path / 'missing.model'}"
  with pytest.raises(config_lib.ConfigError, match="missing.model: no such file; train one"):
    config_lib.resolve(c, 1)
  (tmp_path / "bad.model").write_bytes(b"not a model")
  c.data.tokenizer = f"sentencepiece:{tmp_path / 'bad.model'}"
  with pytest.raises(config_lib.ConfigError, match="not a SentencePiece model file"):
    config_lib.resolve(c, 1)
  c.data.tokenizer = "wordpiece"
  with pytest.raises(config_lib.ConfigError, match="allowed: byte, sentencepiece:PATH"):
    config_lib.resolve(c, 1)
  c.data.tokenizer = f"sentencepiece:{model_file}"
  c.model.vocab_size = 512
  with pytest.raises(config_lib.ConfigError, match="smaller than the .* tokenizer's 1024"):
    config_lib.resolve(c, 1)


def test_a_changed_model_file_is_refused_and_a_fine_tune_keeps_the_tokenizer(model_file, data_dir,
                                                                             tmp_path):
  copy = tmp_path / "copy.model"
  shutil.copy(model_file, copy)
  c = make_tiny_config(data_dir)
  c.data.tokenizer = f"sentencepiece:{copy}"
  saved = config_lib.resolve(c, 1)
  assert saved.data.tokenizer_sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()
  # the same path, another model: what a resume, fine-tune or evaluation of the run would meet
  docs = Documents("pystdlib", "train", data_dir=data_dir)
  copy.write_bytes(tokenizer_training.train(docs, vocab_size=512, model_type="unigram", documents=50,
                                       seed=0, threads=1))
  with pytest.raises(config_lib.ConfigError, match="the tokenizer file has changed since this run"):
    config_lib.resolve(saved, 1)
  with pytest.raises(ValueError, match="has changed"):
    make_tokenizer(saved.data.tokenizer, saved.data.tokenizer_sha256)
  finetune = make_tiny_config(data_dir)
  finetune.data.tokenizer = "sentencepiece:/elsewhere.model"
  with pytest.raises(config_lib.ConfigError, match="a fine-tune keeps the tokenizer of the run"):
    config_lib.inherit_architecture(finetune, saved)
  finetune.data.tokenizer = "byte"  # named: refused too, not taken for "not given"
  with pytest.raises(config_lib.ConfigError, match=r"config.data.tokenizer='byte': a fine-tune "
                     r"keeps the tokenizer"):
    config_lib.inherit_architecture(finetune, saved)
  finetune.data.tokenizer = ""  # unset: the source's, with its recorded hash
  inherited = config_lib.inherit_architecture(finetune, saved)
  assert inherited.data.tokenizer == saved.data.tokenizer
  assert inherited.data.tokenizer_sha256 == saved.data.tokenizer_sha256


def test_the_command_line_refuses_what_it_cannot_train(model_file, data_dir, tmp_path):
  def train(*args):
    return subprocess.run([sys.executable, "-m", "lcx.tokenizer", "train",
                           f"--config.data.data_dir={data_dir}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)

  before = model_file.read_bytes()
  done = train("--vocab_size=1024", f"--out={model_file}")
  assert done.returncode != 0 and "exists; runs may have been trained with it" in done.stderr
  assert model_file.read_bytes() == before  # nothing written over
  done = train("--vocab_size=100", f"--out={tmp_path / 'x.model'}")
  assert "--vocab_size=100 cannot hold the 256 bytes" in done.stderr
  done = train("--vocab_size=100000", "--documents=5", f"--out={tmp_path / 'x.model'}")
  assert re.search(r"is more pieces than 5 documents of this corpus hold; use --vocab_size of at "
                   r"most \d+, or more --documents", done.stderr), done.stderr[-2000:]
  done = train("--vocab_size=260", "--documents=100", f"--out={tmp_path / 'x.model'}")
  needed = re.search(r"--vocab_size=260 is too small: .* use --vocab_size of at least (\d+)",
                     done.stderr)
  assert needed and int(needed[1]) > 260, done.stderr[-2000:]
  assert not (tmp_path / "x.model").exists()


def test_the_token_cache_of_a_subword_tokenizer_is_its_own(model_file, data_dir, tmp_path):
  from lcx.data import token_cache
  from lcx.data.tokenizers import ByteTokenizer
  docs = Documents("pystdlib", "validation", data_dir=data_dir)
  tokenizer = SentencePieceTokenizer(str(model_file))
  cache = token_cache.prepare(docs, tokenizer, tmp_path, progress=False)
  assert cache.meta["dtype"] == "uint16" and cache.meta["tokenizer"] == tokenizer.name
  for i in range(len(docs)):  # encode_many (threads) gives what encode gives
    np.testing.assert_array_equal(cache.tokens(i), tokenizer.encode(docs[i]))
  assert cache.meta["text_bytes"] / cache.meta["tokens"] > 1.5
  assert token_cache.folder_for(docs, ByteTokenizer(), tmp_path) != cache.folder


def test_the_readme_path_from_a_corpus_to_a_pod_scale_study(data_dir, tmp_path):
  """README's pod-scale path at tiny size, on the bundled corpus in place of pg19: the sweep
  refuses to start before the presets' tokenizer exists; prepare builds the dataset and names the
  command that trains it; that command, as printed, writes it where the presets look; prepare
  then builds the token caches; the study's `small` scale lays out its stages."""
  env = dict(os.environ, HOME=str(tmp_path / "home"))
  corpus = ["--config.data.name=pystdlib", "--config.data.text_key=text",
            f"--config.data.data_dir={data_dir}"]

  def run(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)

  sweep = ("-m", "lcx.sweep", "experiments/extrapolation.py:small", f"--out={tmp_path / 'study'}",
           "--dry_run")
  refused = run(*sweep)
  assert refused.returncode == 1 and "pg19-bpe-32000.model, which does not exist yet" in (
      refused.stderr), refused.stderr[-2000:]
  prepare = ("-m", "lcx.data.prepare", "--config=configs/pretrain.py:125m", *corpus)
  first = run(*prepare)
  assert first.returncode == 0, first.stderr[-2000:]
  lines = first.stdout.splitlines()
  command = shlex.split(lines[lines.index(next(l for l in lines if "train it with" in l)) + 1])
  assert command[:4] == ["python", "-m", "lcx.tokenizer", "train"]
  trained = run(*command[1:])
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert "configs/pretrain.py:125m names it (data.tokenizer)" in trained.stdout
  model = tmp_path / "home/.cache/lcx/tokenizers/pg19-bpe-32000.model"
  assert SentencePieceTokenizer(str(model)).vocab_size == 32000
  second = run(*prepare)
  assert second.returncode == 0, second.stderr[-2000:]
  for split in ("train", "validation"):
    assert re.search(rf"/{split}: [\d,]+ documents, [\d,]+ tokens \(sentencepiece:", second.stdout)
  planned = run(*sweep)
  assert planned.returncode == 0, planned.stderr[-2000:]
  assert planned.stdout.count("-m lcx.train --config=configs/pretrain.py:125m") >= 10
