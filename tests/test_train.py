"""End-to-end training: sharded == single device, resume == straight, failures handled cleanly."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from lcx import config as config_lib
from lcx import positions

from lcx.data.sources import Documents
from lcx.cli import PREEMPTED_EXIT_CODE
from lcx.data.tokenizers import ByteTokenizer
from lcx.metrics import read_jsonl
from lcx.model import token_losses
from lcx.sharding import make_mesh
from lcx.train import train_and_evaluate
from lcx.optimizer import OptimizerConfig
from lcx.train.step import TrainProgram
from lcx.runs import layout
from tests.conftest import ROOT

SCHEMES = positions.available()  # every registered scheme


def _losses(workdir) -> list[float]:
  return [r["loss"] for r in read_jsonl(pathlib.Path(workdir) / layout.METRICS)]


def _run(config, workdir, devices=None):
  train_and_evaluate(config, workdir, devices=devices)
  return _losses(workdir)


def _with_memory(config):
  """An XL memory over segments of 8 (the tiny config's sequences are 32 tokens: 4 segments)."""
  config.model.update(memory="xl", segment_len=8)


# The schemes that add to the embeddings alone; every other one, a layer each, in one model (a
# per-layer pattern: each layer's parameters and bias sharded as they are with it alone).
EMBEDDING_SCHEMES = [name for name in SCHEMES if positions.embeds(name)]
LAYER_SCHEMES = tuple(name for name in SCHEMES if not positions.embeds(name))


@pytest.mark.parametrize("position", [*EMBEDDING_SCHEMES, "every-layer-scheme", "rope+xl",
                                      "rope+gqa", "alibi+gqa", "rope+recipes"])
def test_sharded_matches_single_device(tiny_config, tmp_path, position):
  position, _, variant = position.partition("+")
  if position == "every-layer-scheme":
    tiny_config.model.update(position_layers=LAYER_SCHEMES, n_layers=len(LAYER_SCHEMES))
  else:
    tiny_config.model.position = position
  if variant == "xl":
    _with_memory(tiny_config)
  if variant == "gqa":  # 2 key/value heads for 4 query heads, split over tensor=2 as they are
    tiny_config.model.n_kv_heads = 2
  if variant == "recipes":  # today's recipes at once, each with parameters or shapes to shard:
    # RoPE then NoPE layers (scanned), the first a sliding window of 16, QK-norm, SSMax's learned
    # temperature in the NoPE layer, positions PoSE-stretched to 4x the length
    tiny_config.model.update(position_layers=("rope", "none"), scan_layers=True, window=16,
                             attention_layers=("local", "global"), qk_norm=True)
    tiny_config.model.temperature.update(kind="ssmax", schemes=("none",))
    tiny_config.data.pose_target_len = 4 * tiny_config.data.seq_len
  tiny_config.train.steps = 4
  tiny_config.mesh.update(data=1, fsdp=1, tensor=1)
  single = _run(tiny_config, tmp_path / "one", devices=jax.devices()[:1])
  tiny_config.mesh.update(data=2, fsdp=2, tensor=2)
  sharded = _run(tiny_config, tmp_path / "eight")
  assert len(single) == 4
  np.testing.assert_allclose(sharded, single, rtol=2e-5)


@pytest.mark.parametrize("mesh", [dict(data=8, fsdp=1, tensor=1), dict(data=1, fsdp=8, tensor=1)])
def test_data_and_fsdp_meshes_match_single_device(tiny_config, tmp_path, mesh):
  tiny_config.train.steps = 3
  tiny_config.mesh.update(data=1, fsdp=1, tensor=1)
  single = _run(tiny_config, tmp_path / "one", devices=jax.devices()[:1])
  tiny_config.mesh.update(**mesh)
  np.testing.assert_allclose(_run(tiny_config, tmp_path / "eight"), single, rtol=2e-5)


def test_parameters_are_sharded_by_the_rules(tiny_config):
  from lcx.train.loop import _build, _resolve
  tiny_config.mesh.update(data=1, fsdp=4, tensor=2)
  _, _, program, _ = _build(*_resolve(tiny_config, None))
  state = program.init()
  wq = state["params"]["blocks"][0]["attn"]["wq"][...]  # (D, H, K): embed->fsdp, heads->tensor
  assert wq.addressable_shards[0].data.shape == (32 // 4, 4 // 2, 8)
  wk = state["params"]["blocks"][0]["attn"]["wk"][...]  # (D, G, K): kv_heads->tensor as well
  assert wk.addressable_shards[0].data.shape == (32 // 4, 4 // 2, 8)
  mu = state["opt_state"][1][0].mu["blocks"][0]["attn"]["wq"][...]
  assert mu.sharding == wq.sharding  # the optimizer state follows its parameter


def test_gradient_accumulation_matches_the_full_batch(tiny_config, tmp_path):
  tiny_config.train.steps = 3
  full = _run(tiny_config, tmp_path / "full")
  tiny_config.train.grad_accum_steps = 2
  tiny_config.mesh.update(data=4, fsdp=1, tensor=1)
  accumulated = _run(tiny_config, tmp_path / "accum", devices=jax.devices()[:4])
  np.testing.assert_allclose(accumulated, full, rtol=2e-5)


@pytest.mark.parametrize("memory", ["none", "xl"])
def test_resume_matches_straight_run(tiny_config, tmp_path, memory):
  if memory == "xl":
    _with_memory(tiny_config)
  straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
  straight = _run(tiny_config, straight_dir)
  assert sorted(os.listdir(straight_dir / layout.CHECKPOINTS)) == ["3", "6"]
  # An interrupted run: it got to step 6 but only the step-3 checkpoint survived.
  shutil.copytree(straight_dir, resumed_dir)
  shutil.rmtree(resumed_dir / layout.CHECKPOINTS / "6")
  resumed = _run(tiny_config, resumed_dir)
  assert [r["step"] for r in read_jsonl(resumed_dir / layout.METRICS)] == list(range(1, 7))
  np.testing.assert_allclose(resumed, straight, rtol=1e-6)
  meta = json.loads((resumed_dir / layout.CHECKPOINTS / "6" / "meta" / "metadata").read_text())
  assert meta["step"] == 6 and meta["tokens_seen"] == 6 * 8 * 32


def test_corrupt_latest_checkpoint_falls_back_to_previous(trained_run, tiny_config, tmp_path,
                                                          caplog):
  workdir = shutil.copytree(trained_run, tmp_path / "run")
  straight = _losses(workdir)
  for path in (workdir / layout.CHECKPOINTS / "6" / "params").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  # A save that was cut off before it was finalized stays a temporary folder; it is ignored.
  shutil.copytree(workdir / layout.CHECKPOINTS / "3", workdir / layout.CHECKPOINTS / "9.orbax-checkpoint-tmp")
  tiny_config.train.steps = 7
  with caplog.at_level("ERROR"):
    resumed = _run(tiny_config, workdir)
  assert "does not restore" in caplog.text and "checkpoints/6" in caplog.text
  assert (workdir / layout.QUARANTINE / "6").is_dir()  # kept, not deleted
  assert sorted(os.listdir(workdir / layout.CHECKPOINTS))[:3] == ["3", "6", "7"]
  # Steps 4-6 were retrained from step 3 (the schedule differs now: 7 steps, not 6).
  assert len(resumed) == 7 and resumed[:3] == straight[:3]


def _unigram_entropy(data_dir) -> float:
  docs = Documents("pystdlib", "train", data_dir=data_dir)
  counts = np.zeros(ByteTokenizer.vocab_size)
  for i in range(0, len(docs), 5):
    counts += np.bincount(ByteTokenizer().encode(docs[i]), minlength=len(counts))
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def test_tiny_run_learns_well_below_unigram_entropy(tiny_config, tmp_path, data_dir):
  tiny_config.model.update(d_model=64, mlp_dim=256)
  tiny_config.data.update(seq_len=64, batch_size=16)
  tiny_config.train.update(steps=200, log_every=25, warmup_steps=20)
  tiny_config.checkpoint.every_steps = 200
  train_and_evaluate(tiny_config, tmp_path / "run")
  records = read_jsonl(tmp_path / "run" / layout.METRICS)
  entropy = _unigram_entropy(data_dir)
  assert 2.5 < entropy < 4.0  # nats per byte of Python source
  final = np.mean([r["loss"] for r in records[-3:]])
  assert final < entropy - 0.5, (final, entropy)
  for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "step_time_s",
              "tokens_seen", "flops_per_token", "flops_seen", "mfu", "mfu_causal",
              "peak_memory_bytes"):
    assert key in records[-1]
  assert records[-1]["tokens_seen"] == 200 * 16 * 64 and 0 < records[-1]["mfu"] < 1
  # The causal count leaves out half of the attention matmuls: 6 n_layers d_attn L per token.
  attention_half = 6 * 2 * 64 * 64 * records[-1]["tokens_per_second"] / records[-1]["peak_flops"]
  assert records[-1]["mfu"] - records[-1]["mfu_causal"] == pytest.approx(attention_half)
  assert 50 * 2**20 < records[-1]["peak_memory_bytes"] < 20 * 2**30
  saved = json.loads((tmp_path / "run" / layout.CONFIG).read_text())
  assert saved["model"]["head_dim"] == 16 and saved["mesh"]["data"] == 8


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, data_dir):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "lcx.train", "--config", "configs/pretrain.py:tiny",
             "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
             "--config.wandb.mode=disabled", "--config.train.peak_flops=1e12",
             "--config.train.log_every=1", "--config.train.steps=100000",
             "--config.checkpoint.every_steps=100000", "--config.mesh.data=1"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    metrics = workdir / layout.METRICS
    while time.time() < deadline and not (metrics.exists() and len(_losses(workdir)) >= 3):
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]  # stopped early: not finished
  saved = [int(s) for s in os.listdir(workdir / layout.CHECKPOINTS) if s.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < 100000
  summary = json.loads((workdir / layout.SUMMARY).read_text())
  assert summary["preempted"] and summary["step"] == saved[0]
  assert "outputs in" in out
  # The next start resumes there.
  command[command.index("--config.train.steps=100000")] = f"--config.train.steps={saved[0] + 2}"
  subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
  assert read_jsonl(metrics)[-1]["step"] == saved[0] + 2


def test_wandb_offline_run_is_written(tiny_config, tmp_path, monkeypatch):
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key: "auto" means offline
  tiny_config.wandb.mode = "auto"
  tiny_config.train.steps = 2
  train_and_evaluate(tiny_config, tmp_path / "run")
  runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
  assert len(runs) == 1 and runs[0].stat().st_size > 0
  run_id = (tmp_path / "run" / layout.WANDB_ID).read_text()
  assert run_id in runs[0].name
  # Read the offline run back: W&B holds the same losses as metrics.jsonl.
  wandb_cli = pathlib.Path(sys.executable).parent / "wandb"
  dump = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(runs[0])],
                        capture_output=True, text=True, timeout=120, check=True).stdout
  history = [json.loads(line)["history"]["item"] for line in dump.splitlines()
             if '"type":"history"' in line]
  assert [h["loss"] for h in history] == pytest.approx(_losses(tmp_path / "run"))


def test_eval_during_training_logs_a_length_sweep(tiny_config, tmp_path):
  tiny_config.eval.update(every_steps=3, multiples=(1, 4), max_tokens=512)
  train_and_evaluate(tiny_config, tmp_path / "run")
  records = read_jsonl(tmp_path / "run" / layout.EVAL_METRICS)
  assert [r["step"] for r in records] == [3, 6]
  for r in records:
    assert set(r) == {"step", "eval/loss_x1", "eval/perplexity_x1", "eval/loss_x4",
                      "eval/perplexity_x4"}
    assert r["eval/perplexity_x1"] == pytest.approx(np.exp(r["eval/loss_x1"]))
  assert records[1]["eval/loss_x1"] < records[0]["eval/loss_x1"]  # it is learning
  assert len(_losses(tmp_path / "run")) == 6  # training metrics are untouched


def _program_and_batch(tiny_config, rows: int):
  """A TrainProgram of the tiny config, its initial parameters and a batch of random tokens."""
  c = config_lib.resolve(tiny_config, jax.device_count())
  program = TrainProgram(config_lib.model_config(c),
                         OptimizerConfig(learning_rate=1e-3, warmup_steps=1, steps=10),
                         make_mesh(dict(data=c.mesh.data, fsdp=c.mesh.fsdp, tensor=c.mesh.tensor)),
                         tuple(map(tuple, c.mesh.rules)))
  tokens = np.random.default_rng(0).integers(0, 256, (rows, 33)).astype(np.int32)
  batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
           "positions": np.broadcast_to(np.arange(32, dtype=np.int32), (rows, 32)),
           "segment_ids": np.ones((rows, 32), np.int32),
           "weights": np.ones((rows, 32), np.float32)}
  return program, program.init()["params"], batch


def test_answer_weights_scale_their_tokens_in_the_loss(tiny_config):
  program, params, batch = _program_and_batch(tiny_config, rows=4)
  logits = nnx.merge(program.graphdef, params)(batch["tokens"], batch["positions"])
  losses = np.asarray(token_losses(logits, batch["targets"]))
  assert float(program.loss(params, batch)) == pytest.approx(losses.mean(), rel=1e-5)
  batch["weights"][:, 20:25] = 20.0  # as the mixture weighs an answer
  weights = batch["weights"]
  assert float(program.loss(params, batch)) == pytest.approx(
      (losses * weights).sum() / weights.sum(), rel=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_long_sequences_train_on_logits_a_slice_at_a_time(tiny_config, monkeypatch, tied):
  """Past LOGITS_SLICE positions the loss takes the logits a slice at a time, each slice remade
  in the backward pass (a 16K x 49K logit array and its gradient would be 12 GiB): the same loss
  and gradients as the whole logits, a ragged last slice included."""
  from lcx.model import transformer
  tiny_config.model.tie_embeddings = tied
  program, params, batch = _program_and_batch(tiny_config, rows=2)
  loss_and_grads = lambda: jax.jit(jax.value_and_grad(program.loss))(params, batch)
  whole_loss, whole_grads = loss_and_grads()
  monkeypatch.setattr(transformer, "LOGITS_SLICE", 12)  # slices of 12, 12 and 8 (+4 padding)
  sliced_loss, sliced_grads = loss_and_grads()
  assert float(sliced_loss) == pytest.approx(float(whole_loss), rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               sliced_grads, whole_grads)
  jaxpr = str(jax.make_jaxpr(jax.grad(program.loss))(params, batch))
  assert "checkpoint" in jaxpr or "remat" in jaxpr  # each slice's logits are remade, not kept


def test_position_parameters_get_their_own_rate_and_no_decay():
  """position_lr_scale multiplies the position scheme's updates only, weight decay skips them,
  and the optimizer state keeps optax.adamw's layout (checkpoints written before still load)."""
  import dataclasses
  import optax
  from lcx.optimizer import learning_rate_schedule, make_optimizer
  params = {"position": {"table": np.ones((4, 3), np.float32)},
            # a per-layer pattern's schemes (FoX's gate weights: a matrix per layer)
            "position_layers": {0: {"gate_weight": np.ones((2, 3, 3), np.float32)}},
            "w": np.ones((3, 3), np.float32), "b": np.ones(3, np.float32)}
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
  base = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, steps=10, weight_decay=0.5,
                         grad_clip=0.0)
  adamw = optax.adamw(learning_rate_schedule(base), b1=base.b1, b2=base.b2,
                      weight_decay=base.weight_decay,
                      mask=lambda ps: jax.tree.map(lambda p: p.ndim >= 2, ps))
  assert jax.tree.structure(adamw.init(params)) == jax.tree.structure(
      make_optimizer(base).init(params))

  def step(c):
    opt = make_optimizer(c)
    updates, _ = opt.update(grads, opt.init(params), params)
    return updates
  plain, scaled = step(base), step(dataclasses.replace(base, position_lr_scale=10.0))
  np.testing.assert_allclose(scaled["position"]["table"], 10 * plain["position"]["table"],
                             rtol=1e-6)
  gate = lambda updates: updates["position_layers"][0]["gate_weight"]
  np.testing.assert_allclose(gate(scaled), 10 * gate(plain), rtol=1e-6)
  for name in ("w", "b"):
    np.testing.assert_array_equal(scaled[name], plain[name])
  # A matrix outside the schemes is decayed (a larger step than Adam's alone); theirs are not.
  assert float(plain["w"][0, 0]) < float(plain["position"]["table"][0, 0]) < 0
  np.testing.assert_allclose(gate(plain), plain["position"]["table"][0, 0], rtol=1e-6)


def test_the_retrieval_probe_scores_fixed_trials_during_training(tiny_config, tmp_path):
  tiny_config.data.seq_len = 96
  tiny_config.data.retrieval.update(fraction=1.0, answer_weight=10.0, tasks=("niah_single",),
                                    styles=("python",))
  tiny_config.eval.update(every_steps=3, multiples=(1,), max_tokens=512,
                          probe_tasks=("niah_single", "niah_multikey"), probe_trials=4)
  train_and_evaluate(tiny_config, tmp_path / "run")
  records = read_jsonl(tmp_path / "run" / layout.EVAL_METRICS)
  assert [r["step"] for r in records] == [3, 6]
  for r in records:  # niah_multikey (python) needs 84 tokens and fits; prose is not trained
    assert {k for k in r if "retrieval" in k} == {
        f"eval/retrieval/{t}/python/{m}" for t in ("niah_single", "niah_multikey")
        for m in ("exact", "answer_loss")}
    assert r["eval/retrieval/niah_single/python/exact"] in (0, 0.25, 0.5, 0.75, 1)
    # an untrained byte model is near uniform over 256 tokens: about ln 256 = 5.5 nats
    assert 1 < r["eval/retrieval/niah_single/python/answer_loss"] < 8
