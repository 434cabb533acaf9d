"""Invalid configs fail at start with one line naming the field and what it allows."""
import dataclasses
import subprocess
import sys

import pytest

from configs import pretrain
from lcx import positions
from lcx.config import ConfigError, model_config, resolve
from tests.conftest import ROOT


def _tiny(**overrides):
  c = pretrain.get_config("tiny")
  for path, value in overrides.items():
    *sections, field = path.split(".")
    node = c
    for section in sections:
      node = getattr(node, section)
    setattr(node, field, value)
  return c


@pytest.mark.parametrize("overrides, devices, pattern", [
    ({"model.n_heads": 5}, 1, r"config.model.n_heads=5 must divide config.model.d_model=64 "
                              r"\(allowed: 1, 2, 4, 8, 16, 32, 64\)"),
    ({"data.pose_target_len": 64}, 1,
     r"config.data.pose_target_len=64 must exceed config.data.seq_len=128 \(PoSE stretches"),
    ({"model.position": "learned", "model.max_len": 256, "data.pose_target_len": 512}, 1,
     r"config.model.max_len=256 is shorter than the 512 positions training reaches"),
    ({"model.position": "cope"}, 1,
     r"config.model.position='cope' is not allowed; allowed: " + ", ".join(positions.available())),
    ({"model.position": "learned", "model.max_len": 64}, 1,
     r"config.model.max_len=64 is shorter than the 128 positions training reaches"),
    ({"train.steps": 0}, 1, r"config.train.steps=0 must be a positive integer"),
    ({"train.position_lr_scale": -1.0}, 1,
     r"config.train.position_lr_scale=-1.0 must be positive \(1: the model's learning rate\)"),
    ({"data.batch_size": -4}, 1, r"config.data.batch_size=-4 must be a positive integer"),
    ({"mesh.data": 3, "mesh.fsdp": -1}, 8, r"config.mesh: .*cannot fill 8 devices"),
    ({"mesh.data": 2, "mesh.fsdp": 2}, 8,
     r"data\*fsdp\*context\*tensor = 4 but there are 8 devices"),
    ({"data.batch_size": 12}, 8, r"config.data.batch_size=12 must be a multiple of .* = 8"),
    ({"model.mlp": "relu"}, 1, r"config.model.mlp='relu' is not allowed; allowed: swiglu, gelu"),
    ({"model.compute_dtype": "float16"}, 1, r"allowed: float32, bfloat16"),
    ({"mesh.tensor": 8, "mesh.data": 1}, 8, r"config.model.n_heads=4 must be divisible by "
                                              r"config.mesh.tensor=8"),
    ({"data.name": "text_dir"}, 1, r"config.data.text_dir is empty"),
    ({"eval.probe_trials": -1}, 1, r"config.eval.probe_trials=-1 must be >= 0"),
    ({"eval.probe_tasks": ("needle",)}, 1,
     r"config.eval.probe_tasks=\('needle',\): needle is not allowed; allowed: passkey"),
    ({"data.retrieval.answer_weight": -2.0}, 1,
     r"config.data.retrieval.answer_weight=-2.0 must be positive"),
    ({"model.rope.yarn_ramp": "linear"}, 1,
     r"config.model.rope.yarn_ramp='linear' is not allowed; allowed: dims, turns"),
    ({"model.rope.fraction": 0.1}, 1,
     r"config.model.rope.fraction=0.1 leaves no rotary pair in head_dim 16"),
    ({"model.rope.layout": "zigzag"}, 1,
     r"config.model.rope.layout='zigzag' is not allowed; allowed: half, interleaved"),
    ({"model.position": "t5", "model.rope.yarn_ramp": "linear"}, 1,  # no effect, still refused
     r"config.model.rope.yarn_ramp='linear' is not allowed; allowed: dims, turns"),
    ({"model.position": "sinusoidal", "model.d_model": 63, "model.n_heads": 1}, 1,
     r"config.model.d_model=63 must be even for sinusoidal"),
    ({"model.position": "t5", "model.t5.buckets": 1}, 1,
     r"config.model.t5.buckets=1 must be an integer >= 2"),
    ({"model.position": "t5", "model.t5.max_distance": 16}, 1,
     r"config.model.t5.max_distance=16 must exceed buckets // 2 = 16"),
    ({"model.position": "kerple", "model.kerple.kind": "exp"}, 1,
     r"config.model.kerple.kind='exp' is not allowed; allowed: log, power"),
    ({"model.position": "fire", "model.fire.hidden": 0}, 1,
     r"config.model.fire.hidden=0 must be a positive integer"),
    ({"model.position": "fire", "model.fire.threshold": -1.0}, 1,
     r"config.model.fire.threshold=-1.0 must be positive \(tokens\)"),
    ({"model.position": "fire", "model.fire.c": 0.0}, 1, r"config.model.fire.c=0.0 must be positive"),
    ({"model.position": "xpos", "model.xpos.gamma": 0.0}, 1,
     r"config.model.xpos.gamma=0.0 must be positive \(tokens\)"),
    ({"model.position": "xpos", "model.rope.scaling": "yarn"}, 1,
     r"config.model.rope.scaling='yarn' needs config.model.position='rope', not 'xpos'"),
    ({"model.rope.keep": 1.5}, 1, r"config.model.rope.keep=1.5 \(p-RoPE\) must be in \[0, 1\]"),
    ({"model.position": "alibi", "model.rope.keep": 0.5}, 1,
     r"config.model.rope.keep=0.5 \(p-RoPE\) needs config.model.position='rope', not 'alibi'"),
    ({"mesh.rules": (("batch", ("data", "model")),)}, 1,
     r"config.mesh.rules: the entry \('batch', \('data', 'model'\)\) names 'model', which is not "
     r"an axis of the mesh; its axes: data, fsdp, context, tensor \(or None: not sharded\)"),
    ({"mesh.rules": (("embed",),)}, 1,
     r"config.mesh.rules: the entry \('embed',\) is not \(logical axis name, mesh axes\)"),
    ({"wandb.init_timeout_s": -1.0}, 1, r"config.wandb.init_timeout_s=-1.0 must be a positive number"),
    ({"model.n_kv_heads": 3}, 1, r"config.model.n_kv_heads=3 must divide config.model.n_heads=4 "
                                 r"\(allowed: 1, 2, 4; 0: n_heads\)"),
    ({"model.n_kv_heads": 1, "mesh.tensor": 2, "mesh.data": 4}, 8,
     r"config.model.n_kv_heads=1 must be divisible by config.mesh.tensor=2, or add \('kv_heads', "
     r"None\) to config.mesh.rules"),
    ({"mesh.context": 4, "mesh.data": 2, "data.seq_len": 100}, 8,
     r"config.data.seq_len=100 must be a multiple of 2 x mesh.context = 8"),
    ({"mesh.context": 4, "mesh.data": 2, "model.memory": "xl", "model.segment_len": 32}, 8,
     r"config.model.memory='xl' with mesh.context=4: a memory mechanism carries its state"),
    ({"mesh.context": 4, "mesh.data": 2, "model.attention": "native"}, 8,
     r"config.model.attention='native' with mesh.context=4: .*allowed: auto, dense, blockwise"),
    ({"mesh.context": 4, "mesh.data": 2, "mesh.context_exchange": "ring",
      "model.attention": "dense"}, 8,
     r"config.model.attention='dense' with mesh.context_exchange='ring': .*allowed: auto, "
     r"blockwise"),
    ({"mesh.context_exchange": "ulysses"}, 8,
     r"config.mesh.context_exchange='ulysses' is not one of gather, ring"),
    ({"mesh.context": 4, "mesh.data": 2, "mesh.rules": (("batch", "data"),  ("length", None))}, 8,
     r"config.mesh.context=4 needs \('length', 'context'\) in config.mesh.rules"),
])
def test_invalid_config_names_the_field(overrides, devices, pattern):
  with pytest.raises(ConfigError, match=pattern):
    resolve(_tiny(**overrides), devices)


def test_rope_scaling_needs_rope():
  c = _tiny(**{"model.position": "alibi"})
  c.model.rope.scaling = "yarn"
  with pytest.raises(ConfigError, match=r"config.model.rope.scaling='yarn' needs "
                                         r"config.model.position='rope', not 'alibi'"):
    resolve(c, 1)
  c = _tiny()
  c.model.rope.scaling = "llama3"
  with pytest.raises(ConfigError, match=r"allowed: none, linear, ntk, dynamic_ntk, yarn, longrope"):
    resolve(c, 1)
  c.model.rope.scaling = "yarn"
  assert resolve(c, 1).model.rope.original_length == 128


def test_resolve_fills_derived_fields():
  c = resolve(_tiny(**{"mesh.data": -1, "mesh.tensor": 2}), 8)
  assert (c.mesh.data, c.mesh.fsdp, c.mesh.context, c.mesh.tensor) == (4, 1, 1, 2)
  c = resolve(_tiny(**{"mesh.data": 2, "mesh.context": -1}), 8)
  assert (c.mesh.data, c.mesh.context) == (2, 4)
  assert c.model.head_dim == 16 and c.model.max_len == 128 and c.model.vocab_size == 320


def test_presets_have_the_advertised_sizes(tmp_path, monkeypatch):
  from lcx import config as config_lib
  from lcx.model import count_params
  from lcx.model.transformer import abstract_model
  sizes = {}
  for preset in ("125m", "350m"):
    c = pretrain.get_config(preset)
    assert c.data.tokenizer == pretrain.SUBWORD_TOKENIZER and c.data.name == "pg19"
    c.data.tokenizer = "byte"  # the shape is the preset's own (vocab_size 32000), no file needed
    c = resolve(c, 1)
    assert c.model.vocab_size == 32000
    _, params = abstract_model(config_lib.model_config(c))
    sizes[preset] = count_params(params)["total"] / 1e6
  assert 115 < sizes["125m"] < 135 and 320 < sizes["350m"] < 380, sizes
  # without its tokenizer trained (a home without one), the preset says how to train it
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="no such file; train one with"):
    resolve(pretrain.get_config("125m"), 1)
  with pytest.raises(ValueError, match="unknown preset 'huge'; allowed: tiny, 125m, 350m"):
    pretrain.get_config("huge")


def test_cli_reports_a_bad_field_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "lcx.train", "--config", "configs/pretrain.py:tiny",
       "--workdir", str(tmp_path / "run"), "--config.model.position=cope"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("lcx.train: config.model.position='cope' is not allowed; allowed:")
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_a_yarn_run_saved_before_the_ramp_option_keeps_the_papers_ramp():
  """Runs saved without model.rope.yarn_ramp: a YaRN run ramped over the turns (the only ramp
  then), so it keeps that; any other run gets today's default, also when an evaluation then sets
  YaRN by override (lcx.evaluate fills the saved config before applying overrides)."""
  import ml_collections
  from lcx.config import fill_missing
  saved = _tiny().to_dict()
  del saved["model"]["rope"]["yarn_ramp"]
  old = ml_collections.ConfigDict(saved)
  assert fill_missing(old).model.rope.yarn_ramp == "dims"
  old.model.rope.scaling = "yarn"
  assert fill_missing(old).model.rope.yarn_ramp == "turns"
  assert resolve(old, 1).model.rope.yarn_ramp == "turns"
  assert "yarn_ramp" not in old.model.rope  # the saved config itself is left as it was


def test_a_run_saved_before_the_later_schemes_gets_their_defaults():
  """A config saved before p-RoPE and the KERPLE / FIRE / xPos sections resolves with their
  defaults (RoPE turning every pair), so its evaluation can name a new option by override."""
  import ml_collections
  from lcx.config import fill_missing
  saved = _tiny().to_dict()
  del saved["model"]["rope"]["keep"]
  for name in ("kerple", "fire", "xpos"):
    del saved["model"][name]
  filled = fill_missing(ml_collections.ConfigDict(saved))
  assert filled.model.rope.keep == 1.0
  assert filled.model.kerple.kind == "log" and filled.model.fire.hidden == 32
  assert filled.model.xpos.gamma == 512.0


def test_a_run_saved_before_grouped_query_attention_resolves_as_it_ran():
  """A config saved before model.n_kv_heads and the kv_heads rule: one key/value head per query
  head, and the key/value projections sharded as the query heads were."""
  import ml_collections
  saved = _tiny(**{"model.n_heads": 8}).to_dict()
  del saved["model"]["n_kv_heads"]
  saved["mesh"]["rules"] = [list(r) for r in saved["mesh"]["rules"] if r[0] != "kv_heads"]
  c = resolve(ml_collections.ConfigDict(saved), 1)
  assert c.model.n_kv_heads == 8
  assert dict(c.mesh.rules)["kv_heads"] == dict(c.mesh.rules)["heads"] == "tensor"
  assert resolve(_tiny(**{"model.n_heads": 8, "model.n_kv_heads": 2}), 1).model.n_kv_heads == 2
  assert resolve(_tiny(), 1).model.n_kv_heads == 4  # 0: as many as the query heads


def test_a_run_saved_before_context_parallelism_resolves_as_it_ran():
  """A config saved before mesh.context, its exchange and the length rule: one device per
  sequence, and the gather should a later override shard it."""
  import ml_collections
  saved = _tiny().to_dict()
  for name in ("context", "context_exchange"):
    del saved["mesh"][name]
  saved["mesh"]["rules"] = [list(r) for r in saved["mesh"]["rules"] if r[0] != "length"]
  c = resolve(ml_collections.ConfigDict(saved), 8)
  assert (c.mesh.context, c.mesh.context_exchange) == (1, "gather")
  assert dict(c.mesh.rules)["length"] == "context"
  assert model_config(c).context_exchange == "gather"


def test_an_xpos_run_saved_with_its_rotation_in_model_rope_keeps_it():
  """xPos's base, fraction and layout were model.rope's until RoPE's options became the RoPE
  scheme's own: a saved xPos run finds them in model.xpos (model.rope back at its defaults, which
  under xPos must stay so), and another scheme's saved run keeps its model.rope as it was."""
  import ml_collections
  from lcx.config import fill_missing, model_config
  saved = _tiny(**{"model.position": "xpos", "model.rope.base": 500.0,
                   "model.rope.layout": "interleaved", "model.xpos.gamma": 64.0}).to_dict()
  for field in ("base", "fraction", "layout"):
    del saved["model"]["xpos"][field]
  old = ml_collections.ConfigDict(saved)
  filled = fill_missing(old)
  assert (filled.model.xpos.base, filled.model.xpos.layout) == (500.0, "interleaved")
  assert (filled.model.rope.base, filled.model.rope.layout) == (10000.0, "half")
  assert model_config(resolve(old, 1)).position_options == positions.XposOptions(
      gamma=64.0, base=500.0, layout="interleaved")
  saved["model"]["position"] = "rope"
  assert fill_missing(ml_collections.ConfigDict(saved)).model.rope.base == 500.0
  # set today under xPos, model.rope's rotation would do nothing: refused, pointing at RoPE
  with pytest.raises(ConfigError, match=r"config.model.rope.base=500.0 needs config.model."
                                        r"position='rope', not 'xpos'; allowed with 'xpos': 10000"):
    resolve(_tiny(**{"model.position": "xpos", "model.rope.base": 500.0}), 1)
  with pytest.raises(ConfigError, match=r"config.model.xpos.layout='zigzag' is not allowed"):
    resolve(_tiny(**{"model.xpos.layout": "zigzag"}), 1)  # checked where it has no effect too


def test_the_model_and_optimizer_defaults_come_from_their_dataclasses():
  """The tiny preset states no model or optimizer default of its own: resolved, it is the
  dataclasses' defaults with the derived fields filled in."""
  from lcx import config as config_lib
  from lcx.model import ModelConfig
  from lcx.positions import RopeOptions
  from lcx.optimizer import OptimizerConfig
  c = resolve(pretrain.get_config("tiny"), 1)
  rope = dataclasses.replace(RopeOptions(), original_length=c.data.seq_len)  # derived, as head_dim
  assert config_lib.model_config(c) == ModelConfig(vocab_size=c.model.vocab_size,
                                                   position_options=rope,
                                                   n_kv_heads=4)  # derived: n_heads
  assert config_lib.optimizer_config(c) == OptimizerConfig(learning_rate=3e-3, warmup_steps=30,
                                                           steps=300)
  c.model.rope.factor = 4  # an integer for a float field, as a command line may give it
  assert config_lib.model_config(c).position_options.factor == 4.0


def test_a_new_scheme_brings_its_own_checks():
  """Config resolution asks the registered scheme, so a scheme added in one module is checked
  without touching lcx/config.py."""
  from lcx import positions
  from lcx.positions import base

  @positions.register("even_heads_only")
  class EvenHeads(positions.PositionScheme):

    @classmethod
    def validate(cls, cfg, train_length):
      super().validate(cfg, train_length)
      if cfg.n_heads % 2:
        raise ValueError(f"config.model.n_heads={cfg.n_heads} must be even for even_heads_only")

  try:
    assert resolve(_tiny(**{"model.position": "even_heads_only"}), 1).model.n_heads == 4
    with pytest.raises(ConfigError, match=r"n_heads=1 must be even for even_heads_only"):
      resolve(_tiny(**{"model.position": "even_heads_only", "model.n_heads": 1}), 1)
    c = _tiny(**{"model.position": "even_heads_only"})
    c.model.rope.scaling = "linear"  # RoPE's options are refused for it (lcx.registry)
    with pytest.raises(ConfigError, match=r"needs config.model.position='rope', not "
                                          r"'even_heads_only'"):
      resolve(c, 1)
  finally:
    base.REGISTRY.unregister("even_heads_only")


def test_reading_a_config_builds_no_model_and_loads_no_kernel():
  """The config, the presets and the sweep driver check and describe configs: they import no
  transformer, no train step and no attention kernel (nor Pallas), only what describes them."""
  script = ("import sys, lcx.config, lcx.sweep, configs.pretrain, configs.finetune\n"
            "print(sorted(m for m in sys.modules if m in ('lcx.model.transformer', "
            "'lcx.train.step', 'jax.experimental.pallas') or m.startswith(("
            "'lcx.attention.blockwise', 'lcx.attention.pallas', 'lcx.attention.library', "
            "'lcx.attention.native'))))\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
  assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_pose_sizes_a_learned_table_to_its_target_length():
  assert resolve(_tiny(**{"model.position": "learned", "data.pose_target_len": 512}),
                 1).model.max_len == 512
