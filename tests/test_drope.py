"""DroPE: a RoPE run continued without position encoding and with QK-norm
(configs/finetune.py:drope, config.finetune_changes), its test-time temperature
1 + c ln(L / L_train), and the fit of c (python -m lcx.drope fit)."""
import json
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune, pretrain
from lcx import config as config_lib
from lcx.config import ConfigError
from lcx.drope import FitOptions, fit
from lcx.evaluate.loading import load_run
from lcx.evaluate.runner import EvalOptions, evaluate_run
from lcx.model.temperature import TemperatureOptions, query_scale
from lcx.runs.checkpoint import flat_arrays
from lcx.train import train_and_evaluate
from tests.conftest import ROOT


def test_the_temperature_is_one_to_the_training_length_then_one_plus_c_log_the_ratio():
  drope = TemperatureOptions(kind="drope", length=64, drope_c=0.3)
  positions = jnp.arange(256)[None]
  assert np.allclose(query_scale(drope, positions[:, :64]), 1.0)
  np.testing.assert_allclose(query_scale(drope, positions), 1 + 0.3 * np.log(4), rtol=1e-6)
  np.testing.assert_allclose(query_scale(drope, positions[:, :1], length=128),  # a decode step
                             1 + 0.3 * np.log(2), rtol=1e-6)


@pytest.fixture(scope="module")
def drope_run(trained_run, tmp_path_factory):
  """trained_run (RoPE, 6 steps at 32 tokens) continued 4 steps as DroPE."""
  c = finetune.get_config("drope")
  c.init_from = str(trained_run)
  c.data.update(data_dir=json.loads((trained_run / "config.json").read_text())["data"][
      "data_dir"], seq_len=32, batch_size=8)
  c.model.update(d_model=32, n_heads=4, mlp_dim=64)
  c.train.update(steps=4, log_every=1)
  c.checkpoint.every_steps = 4
  c.wandb.mode = "disabled"
  workdir = tmp_path_factory.mktemp("drope") / "run"
  train_and_evaluate(c, workdir)
  return workdir


def test_drope_keeps_the_source_s_weights_and_starts_qk_norm_at_one(trained_run, drope_run):
  from lcx.runs.restore import restore_params_changed
  from lcx.train.step import TrainProgram
  c = load_run(drope_run).config
  assert (c.model.position, c.model.qk_norm) == ("none", True)
  assert tuple(c.finetune_changes) == ("position", "position_layers", "qk_norm")
  program = TrainProgram(config_lib.model_config(c), config_lib.optimizer_config(c),
                         load_run(drope_run).mesh, tuple(map(tuple, c.mesh.rules)))
  params, meta, report = restore_params_changed(trained_run, c, program.init()["params"],
                                                load_run(drope_run).mesh)
  source = flat_arrays(load_run(trained_run).model)
  ours = flat_arrays(params)
  np.testing.assert_array_equal(ours["blocks/0/attn/wq"], source["blocks/0/attn/wq"])
  np.testing.assert_array_equal(ours["embedding"], source["embedding"])
  np.testing.assert_array_equal(ours["blocks/1/attn/q_norm/scale"], np.ones(c.model.head_dim))
  assert sorted(report["fresh"]) == sorted(f"blocks/{i}/attn/{n}_norm/scale" for i in (0, 1)
                                           for n in "qk")
  assert meta["step"] == 6 and report["dropped"] == []


def test_c_is_fitted_at_2x_and_its_overrides_reproduce(drope_run, tmp_path):
  run = shutil.copytree(drope_run, tmp_path / "run")
  result, path = fit(run, FitOptions(multiple=2, grid=(0.0, 0.5, 1.0, 2.0), tokens=256),
                     progress=False)
  assert path == run / "drope.json" and json.loads(path.read_text()) == result
  assert result["c"] in (0.0, 0.5, 1.0, 2.0) and result["length"] == 64
  assert result["perplexity"] == min(result["perplexity_by_c"].values())
  assert len(set(result["perplexity_by_c"].values())) == 4  # c changes the model at 2x
  evaluated, _ = evaluate_run(run, result["overrides"], EvalOptions(
      lengths=(64,), max_tokens=256, stride=-1, trials=0), progress=False)
  assert evaluated["perplexity"][0]["perplexity"] == pytest.approx(result["perplexity"], rel=1e-4)
  # the command line applies the file as a study's evaluation stage does
  command = [sys.executable, "-m", "lcx.evaluate", f"--workdir={run}", "--lengths=64",
             "--max_tokens=256", "--trials=0", "--stride=-1", "--name=fitted"]
  done = subprocess.run([*command, f"--overrides_from={path}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  fitted = json.loads((run / "eval" / "fitted.json").read_text())
  assert fitted["perplexity"][0]["perplexity"] == pytest.approx(result["perplexity"], rel=1e-4)
  missing = subprocess.run([*command, f"--overrides_from={run}/nothing.json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
  assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith(
      "lcx.evaluate: --overrides_from=") and "no such file" in missing.stderr


def test_finetune_changes_are_refused_where_they_cannot_work():
  c = finetune.get_config("drope")
  with pytest.raises(ConfigError, match="config.finetune_changes=.* needs config.init_from"):
    config_lib.resolve(c, 1)
  c.init_from, c.init_optimizer = "/somewhere", True
  with pytest.raises(ConfigError, match="init_optimizer=false"):
    config_lib.resolve(c, 1)
  c = finetune.get_config("drope")
  c.finetune_changes = ("d_model",) + tuple(c.finetune_changes)
  c.init_from = "/somewhere"
  source = config_lib.resolve(pretrain.get_config("tiny"), 1)
  assert config_lib.inherit_architecture(c, source).model.d_model == c.model.d_model
  c.finetune_changes = ("rope",)
  with pytest.raises(ConfigError, match="config.finetune_changes names 'rope'"):
    config_lib.inherit_architecture(c, source)
