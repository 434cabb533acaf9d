"""`model.attention=auto` from measured speed: the kernel table (lcx.attention.choice), the choice
per scheme, length and call, the refusals of a bad table, and lcx.bench.kernels, which measures one."""
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcx import attention, positions
from lcx.attention import choice as kernel_choice
from lcx.attention.library import dense_attention
from lcx.bench import kernels as kernels_bench
from lcx.model import ModelConfig, Transformer
from tests.conftest import ROOT

# A made-up GPU table whose rankings differ per length, so every rule of the choice shows.
GPU_TABLE = {"device": "gpu-test", "seconds": {
    "none": {"1024": {"cudnn": 2.0, "pallas": 1.5, "blockwise": 4.0, "dense": 1.0},
             "4096": {"cudnn": 3.0, "pallas": 4.0, "blockwise": 9.0, "dense": 2.5}},
    "alibi": {"1024": {"pallas": 1.1, "blockwise": 1.2}}}}


def test_auto_runs_the_fastest_measured_kernel_that_takes_the_call(caplog):
  table = kernel_choice.parse(GPU_TABLE, "the test table")
  none = attention.Choice("auto", "none", None, "gpu", table=table)
  assert none.kernel(512) == "dense"  # ranked at the next measured length up, 1024
  assert none.kernel(2048) == "dense"  # at 4096
  assert none.kernel(2048, packed=True) == "dense"
  # Past the longest measured length only kernels of linear memory: never dense.
  assert none.kernel(32768) == "cudnn"
  # cuDNN would need a (batch, 1, L, L) mask for packed documents, so auto never sends them.
  assert none.kernel(32768, packed=True) == "pallas"
  # A KV cache's queries sit at the end of longer keys: dense or a tiled kernel.
  assert none.kernel(16, 32768, cache=True) == "pallas"
  alibi = attention.Choice("auto", "alibi", positions.bias_kind("alibi"), "gpu", table=table)
  assert alibi.kernel(1024) == "pallas"
  # No row for the scheme, or no table: the fixed order.
  t5 = attention.Choice("auto", "t5", positions.bias_kind("t5"), "gpu", table=table)
  assert t5.kernel(1024) == "blockwise"
  untabled = attention.Choice("auto", "none", None, "gpu")
  assert untabled.kernel(1024) == "cudnn"
  assert untabled.kernel(1024, packed=True) == "blockwise"
  # Context parallelism's calls (a query offset into gathered keys): a tiled kernel that takes
  # one, never dense (a device's key length is not what the table measured).
  assert none.kernel(512, offset=True) == "blockwise"
  assert alibi.kernel(1024, offset=True) == "blockwise"
  # A named kernel runs every call, as asked (cuDNN with its mask).
  assert attention.Choice("cudnn", "none", None, "gpu", table=table).kernel(
      1024, packed=True) == "cudnn"
  caplog.set_level(logging.INFO, logger="lcx")
  caplog.clear()
  for _ in range(3):
    none.kernel(3000)
  logged = [r.getMessage() for r in caplog.records]
  assert logged == ["attention=auto on gpu, none, 3000 queries x 3000 keys: dense, the fastest "
                    "measured at L=4096 in the test table"]
  untabled.kernel(1000, packed=True)
  assert caplog.records[-1].getMessage() == (
      "attention=auto on gpu, none, 1000 queries x 1000 keys, packed: blockwise, its fixed order "
      "(no kernel table for this device: python -m lcx.bench.kernels measures one); passed over "
      "cudnn: it keeps packed documents apart only with a (batch, 1, L, L) mask")


@pytest.fixture
def cpu_table(tmp_path, monkeypatch):
  """A table for this CPU in which dense wins short rows and blockwise long ones (native, were it
  measured, is left out), named by LCX_KERNEL_TABLE."""
  path = tmp_path / "cpu.json"
  path.write_text(json.dumps({"device": kernel_choice.device_name(), "seconds": {
      "alibi": {"64": {"dense": 1.0, "blockwise": 2.0}, "256": {"dense": 3.0, "blockwise": 2.0}}}}))
  monkeypatch.setenv(kernel_choice.ENV, str(path))
  kernel_choice.load.cache_clear()
  yield path
  kernel_choice.load.cache_clear()


def test_a_model_on_auto_runs_per_length_what_its_device_table_measured(cpu_table, caplog):
  caplog.set_level(logging.INFO, logger="lcx")
  model = Transformer(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, head_dim=8,
                                  mlp_dim=32, max_len=512, position="alibi"), rngs=nnx.Rngs(0))
  choice = model.attention_choice
  assert choice.table.source == str(cpu_table)
  assert [choice.kernel(n) for n in (32, 64, 200, 512)] == ["dense", "dense", "blockwise",
                                                             "blockwise"]
  # The attention function follows the choice per call, and each kernel gives dense's values.
  attend = attention.make(choice)
  bias = positions.LinearBias(positions.alibi_slopes(2))
  for n in (64, 200):
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (1, n, 2, 8)) for i in range(3))
    pos = jnp.arange(n)[None]
    kw = dict(q_positions_BQ=pos, k_positions_BK=pos, bias_fn=bias)
    np.testing.assert_allclose(attend(q, k, v, **kw), dense_attention(q, k, v, **kw),
                               rtol=1e-5, atol=1e-6)
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert f"alibi, 200 queries x 200 keys: blockwise, the fastest measured at L=256 in {cpu_table}" \
      in messages


def test_a_bad_kernel_table_is_refused_in_one_line_when_the_model_is_built(cpu_table):
  def build():
    kernel_choice.load.cache_clear()
    return attention.choose("auto", scheme="alibi")

  cpu_table.write_text("{not json")
  with pytest.raises(ValueError, match=f"kernel table {cpu_table} cannot be read"):
    build()
  cpu_table.write_text(json.dumps({"device": "cpu", "seconds": {"none": {"x": {}}}}))
  with pytest.raises(ValueError, match="is not one lcx.bench.kernels wrote"):
    build()
  cpu_table.write_text(json.dumps({"device": "gpu-nvidia-h100", "seconds": {}}))
  with pytest.raises(ValueError, match="was measured on gpu-nvidia-h100, this device is cpu"):
    build()
  os.environ[kernel_choice.ENV] = str(cpu_table.with_name("absent.json"))
  with pytest.raises(ValueError, match="LCX_KERNEL_TABLE=.*absent.json: no such file"):
    build()
  # A named kernel reads no table.
  assert attention.choose("blockwise", scheme="alibi").table is None


def test_the_kernel_bench_measures_a_table_auto_can_read(tmp_path):
  tiny = ModelConfig(vocab_size=64, d_model=16, n_heads=2, head_dim=8, mlp_dim=32)
  seconds, skipped = kernels_bench.measure(tiny, ("none", "kerple", "fox"), (64,), tokens=128,
                                           repeats=1, memory_limit=2 ** 30)
  assert set(seconds["none"][64]) == {"native", "blockwise", "dense"}
  assert set(seconds["kerple"][64]) == {"blockwise", "dense"}  # native takes no learned bias
  assert set(seconds["fox"][64]) == {"blockwise", "dense"}  # nor one made from the data
  assert all(s > 0 for row in seconds.values() for s in row[64].values()) and not skipped
  seconds, skipped = kernels_bench.measure(tiny, ("none",), (64,), tokens=128, repeats=1,
                                           memory_limit=1)
  assert seconds["none"][64] == {} and set(skipped["none"][64]) == {"native", "blockwise", "dense"}
  # The command line: its table, printed and written, is one auto reads.
  out = tmp_path / "table.json"
  result = subprocess.run(
      [sys.executable, "-m", "lcx.bench.kernels", "--model=tiny", "--lengths=64",
       "--tokens=128", "--repeats=1", "--schemes=rope,alibi", f"--out={out}"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  table = kernel_choice.parse(json.loads(out.read_text()), str(out))
  assert set(table.seconds) == {"none", "alibi"}  # rope attends as none does
  assert f"written to {out}" in result.stdout and "| alibi | 64 |" in result.stdout
  result = subprocess.run([sys.executable, "-m", "lcx.bench.kernels", "--schemes=bogus"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode != 0 and "unknown schemes ['bogus']; allowed:" in result.stderr
