"""Shared fixtures: 8 simulated CPU devices, W&B off, one small built copy of the bundled corpus,
and one compilation cache for the session."""
import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("WANDB_MODE", "disabled")
# Many tests (and the processes they start) compile the same tiny programs: JAX's persistent
# cache, fresh for each session, compiles each once (about a third off the training tests).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="lcx-test-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import pretrain  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir the session's tests share; pystdlib is built into it on first use."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def tiny_config(data_dir):
  """The tiny preset made smaller still, with nothing measured or uploaded."""
  return make_tiny_config(data_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir):
  """A tiny run trained once to step 6 (checkpoints 3 and 6); tests copy it before changing it."""
  from lcx.train import train_and_evaluate
  workdir = tmp_path_factory.mktemp("trained") / "run"
  train_and_evaluate(make_tiny_config(data_dir), workdir)
  return workdir


def make_tiny_config(data_dir):
  c = pretrain.get_config("tiny")
  c.data.data_dir = data_dir
  c.data.seq_len = 32
  c.data.batch_size = 8
  c.model.d_model = 32
  c.model.n_heads = 4
  c.model.mlp_dim = 64
  c.train.steps = 6
  c.train.log_every = 1
  c.train.warmup_steps = 2
  c.train.peak_flops = 1e12
  c.checkpoint.every_steps = 3
  c.wandb.mode = "disabled"
  return c


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, data_dir):
  """(spec, directory, states) of tests/tiny_study.py run once by the sweep runner."""
  from lcx.sweep import run_sweep
  out = tmp_path_factory.mktemp("study")
  spec = f"tests/tiny_study.py:{data_dir}"
  cwd, flags = os.getcwd(), os.environ["XLA_FLAGS"]
  os.chdir(ROOT)
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"  # faster subprocesses
  try:
    states = run_sweep(spec, out, progress=False)
  finally:
    os.chdir(cwd)
    os.environ["XLA_FLAGS"] = flags
  return spec, out, states


@pytest.fixture(scope="session")
def small_subword_model(tmp_path_factory, data_dir):
  """A 512-piece SentencePiece model of the bundled corpus (trained in about a second)."""
  from lcx import tokenizer as tokenizer_training
  from lcx.data.sources import Documents
  path = tmp_path_factory.mktemp("subword") / "sp512.model"
  path.write_bytes(tokenizer_training.train(Documents("pystdlib", "train", data_dir=data_dir),
                                            vocab_size=512, model_type="bpe", documents=200,
                                            seed=0, threads=2))
  return path


@pytest.fixture
def preset_tokenizer(small_subword_model, tmp_path, monkeypatch):
  """A home whose ~/.cache/lcx/tokenizers holds the file the accelerator presets name (a small
  stand-in: the presets' 32,000 vocabulary holds its 512 pieces), so their configs resolve."""
  monkeypatch.setenv("HOME", str(tmp_path))
  target = pathlib.Path(pretrain.SUBWORD_TOKENIZER.removeprefix("sentencepiece:")).expanduser()
  target.parent.mkdir(parents=True)
  shutil.copy(small_subword_model, target)
  return target
