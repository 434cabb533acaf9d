"""The models the benchmark times: its own (train and evaluation), a preset's, and the rows'
position-scheme variants."""
import dataclasses

import jax

from lcx import positions
from lcx import overrides as overrides_lib
from lcx.model import ModelConfig
from lcx.sharding import make_mesh


# The rows: every registered scheme, and p-RoPE (RoPE turning only its fastest 75% of pairs).
VARIANTS = {**{name: {"position": name} for name in positions.available()},
            "p-rope": {"position": "rope", "position_options": positions.RopeOptions(keep=0.75)}}
SCHEMES = tuple(VARIANTS)  # the default rows
# Rows asked for by name: every layer local, a sliding window or chunks of 512 tokens (no
# position scheme, so that `none` is the full-attention row they are compared with).
VARIANTS.update({f"{kind}-512": {"position": "none", kind: 512} for kind in ("window", "chunk")})
ROWS = tuple(VARIANTS)


def local_kind(row: str) -> str:
  """How a row's layers attend locally ("window", "chunk"; "": not at all)."""
  return next((kind for kind in ("window", "chunk") if VARIANTS[row].get(kind)), "")
# The train-step model of the MFU target: d 512, 4 layers, 8 heads, GELU MLP 2048, bytes.
TRAIN_MODEL = dict(vocab_size=256, d_model=512, n_layers=4, n_heads=8, head_dim=64, mlp_dim=2048,
                   mlp="gelu")
# The evaluation model: the `tiny` preset's shape.
EVAL_MODEL = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, head_dim=16, mlp_dim=256)
# Fields every row sets itself (the scheme, its length and kernel), left out of a preset's model.
_ROW_FIELDS = ("position", "position_options", "max_len", "attention")


def preset_model(preset: str) -> dict:
  """The model fields of a configs/pretrain.py preset (`125m`: bfloat16 compute), resolved as a
  run on one device would resolve them, less those each row sets."""
  from lcx import config as config_lib
  # loaded by path like every --config (lcx.bench runs from the repository's root)
  config = overrides_lib.load_config(f"configs/pretrain.py:{preset}", [])
  # The model's shape is the preset's (its vocab_size is set), whatever tokenizer file is here.
  config.data.tokenizer = "byte"
  model = config_lib.model_config(config_lib.resolve(config, 1))
  # shallow: nested options (the temperature's) stay dataclasses
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in _ROW_FIELDS}


def with_fields(model: dict, assignments) -> dict:
  """model with `field=value` assignments (e.g. scan_layers=true), each value read as its
  ModelConfig field's type."""
  types = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
  plain = (bool, int, float, str, "bool", "int", "float", "str")
  settable = {n for n, t in types.items() if t in plain} - set(_ROW_FIELDS)  # plain values only
  model = dict(model)
  for assignment in assignments:
    name, _, value = assignment.partition("=")
    if name not in settable or not value:
      allowed = ", ".join(sorted(settable))
      raise ValueError(f"lcx.bench: --model_fields takes field=value with a model field; got "
                       f"{assignment!r}; allowed fields: {allowed}")
    kind = types[name]
    if kind in (bool, "bool"):
      if value.lower() not in ("true", "false"):
        raise ValueError(f"lcx.bench: {name} is true or false; got {value!r}")
      model[name] = value.lower() == "true"
    else:
      model[name] = {"int": int, "float": float}.get(getattr(kind, "__name__", kind), str)(value)
  return model


RULES = (("batch", ("data", "fsdp")), ("length", "context"), ("embed", "fsdp"), ("vocab", "tensor"),
         ("heads", "tensor"), ("mlp", "tensor"))


def single_device_mesh():
  return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.local_devices()[:1])
