"""lcx.bench: memory accounting that shows linear vs quadratic attention, and the CLI's outputs.
Nothing here is timed: the figures themselves live in benchmarks/README.md."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tqdm

from lcx import bench
from lcx.attention import choice as kernel_choice
from lcx.bench.targets import preset_target_checks
from lcx.model import ModelConfig
from tests.conftest import ROOT


def _forward_memory(implementation: str, length: int) -> int:
  model = ModelConfig(**bench.EVAL_MODEL, position="alibi", max_len=length,
                      attention=implementation)
  losses, params = bench.forward_fn(model)
  tokens = jnp.zeros((1, length + 1), jnp.int32)
  return bench.compiled_memory(losses.lower(params, tokens).compile())


def test_blockwise_evaluation_memory_grows_linearly_and_dense_quadratically():
  dense = [_forward_memory("dense", n) for n in (1024, 4096)]
  blockwise = [_forward_memory("blockwise", n) for n in (1024, 4096)]
  assert dense[1] / dense[0] > 10  # 16x the scores
  assert blockwise[1] / blockwise[0] < 5  # 4x the tokens
  assert blockwise[1] < dense[1] / 10


def test_bench_prints_the_tables_and_writes_json(tmp_path, data_dir):
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "lcx.bench", "--lengths=256", "--eval_lengths=512",
       "--schemes=none,alibi", "--implementations=blockwise,native", "--tokens_per_step=256",
       "--repeats=1", "--profile_lengths=256", f"--out={out}", f"--config.data.data_dir={data_dir}",
       "--data_lengths=256,1024", "--data_batch=32", "--data_batches=2"], cwd=ROOT,
      capture_output=True,
      text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "matmul peak in this run" in result.stdout
  assert "Where the attention time goes (one layer of the train model" in result.stdout
  assert "| what | blockwise L=256 | native L=256 |" in result.stdout
  assert "ALiBi step time <= 1.01x none at L=256, from the native kernel timed alone" in (
      result.stdout)
  assert "| alibi | 256 | 1 | blockwise |" in result.stdout
  assert "| alibi | 256 | 1 | native |" in result.stdout
  assert "ALiBi memory <= 1.01x none at L=256" in result.stdout
  numbers = json.loads(out.read_text())
  alibi = next(r for r in numbers["train"] if r["scheme"] == "alibi")
  assert alibi["memory_vs_none"] < 1.001  # no (L, L) bias buffer: it is made per tile
  assert 0 < alibi["mfu"] < 1 and alibi["tokens_per_second"] > 0
  assert numbers["eval"][0]["memory_bytes"] > 0 and numbers["peak_flops"] > 1e9
  assert np.isclose(alibi["tokens_per_second"] * alibi["step_seconds"], 256)
  # the input pipeline: one row per length, batches from the token cache of the bundled corpus
  assert "### Input pipeline" in result.stdout
  assert [(r["tokenizer"], r["length"], r["batch"]) for r in numbers["data"]] == [
      ("byte", 256, 32), ("byte", 1024, 32)]
  for r in numbers["data"]:
    assert np.isclose(r["tokens_per_second"] * r["seconds_per_batch"], 32 * r["length"])
    assert r["bytes_per_token"] == 1.0 and r["prepare_seconds_per_gb"] > 0
  none = next(r for r in numbers["train"] if r["scheme"] == "none" and
              r["implementation"] == alibi["implementation"])
  assert np.isclose(alibi["time_vs_none"], alibi["round_seconds"][0] / none["round_seconds"][0])
  assert [p["implementation"] for p in numbers["attention_profiles"]] == ["blockwise", "native"]
  for profile in numbers["attention_profiles"]:
    assert profile["tiles"] == 3  # 2 x 2 tiles of 128, the one above the diagonal skipped
    # Both timed; not their order: at L=256 they are ~6 ms each, within this CPU's noise.
    assert profile["forward_seconds"] > 0 and profile["forward_backward_seconds"] > 0
    assert profile["forward_backward_alibi_seconds"] > 0 and profile["alibi_vs_none"] > 0
    assert 0 < profile["tile_matmul_flops_per_second"] < 10 * numbers["peak_flops"]


def test_time_vs_none_pairs_the_rounds():
  # One lucky fast round of the base moves the ratio of the fastest times, not the paired median.
  base = [1.0, 1.0, 0.9]
  scheme = [1.01, 1.01, 1.0]
  assert min(scheme) / min(base) > 1.1
  assert np.isclose(bench.paired_ratio(scheme, base), 1.01)


def test_a_preset_model_runs_through_auto_with_both_mfus_and_its_targets():
  """--model=<preset> (here tiny, layers scanned): the rows name the kernel `auto` chose, the
  causal MFU leaves out half of the attention FLOPs, and the accelerator targets are checked."""
  model = bench.with_fields(bench.preset_model("tiny"), ["scan_layers=true", "attention_block=32"])
  assert model["d_model"] == 64 and model["scan_layers"] is True and "position" not in model
  mesh = bench.single_device_mesh()
  progress = tqdm.tqdm(disable=True)
  rows = bench.run_train_benchmarks(mesh, bench.PeakMeter(mesh), ("none", "t5"), (64,), ("auto",),
                                    tokens_per_step=128, repeats=1, progress=progress,
                                    model_fields=model)
  evals = bench.run_eval_benchmarks((128,), ("auto",), 2 ** 30, 1, progress, model,
                                    ("none", "alibi"))
  t5 = next(r for r in rows if r["scheme"] == "t5")
  # auto: what this CPU's kernel table measured fastest for T5 at the next length up, among the
  # kernels that take a bias (native does not)
  table = kernel_choice.load(kernel_choice.device_name())
  expected = table.fastest("t5", 64, ("blockwise", "dense"))[0]
  assert t5["kernel"] == expected
  assert [r["scheme"] for r in evals] == ["none", "alibi"]
  for r in rows:
    attention_flops = 6 * model["n_layers"] * model["n_heads"] * model["head_dim"] * 64 * 128
    assert np.isclose(r["model_flops"] - r["causal_model_flops"], attention_flops)
    assert 0 < r["mfu_causal"] < r["mfu"]
  checks = {what: measured for what, _, measured in preset_target_checks(rows, evals)}
  assert f"t5 step time <= 1.05x none at L=64 (auto: {expected})" in checks
  assert any(what.startswith("evaluation of 128 tokens (alibi") for what in checks)


def test_model_fields_name_what_is_allowed():
  with pytest.raises(ValueError, match="allowed fields: .*scan_layers"):
    bench.with_fields(bench.TRAIN_MODEL, ["scan_layer=true"])
  with pytest.raises(ValueError, match="scan_layers is true or false"):
    bench.with_fields(bench.TRAIN_MODEL, ["scan_layers=yes"])
  assert bench.with_fields(bench.TRAIN_MODEL, ["attention_block=64"])["attention_block"] == 64
