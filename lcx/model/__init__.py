"""The decoder-only transformer (transformer.py) and its configuration (config.py).

`from lcx.model import ModelConfig, Transformer, ...` works for both; each part is imported when
first asked for, so that reading a model's configuration builds and loads no Flax module.
"""
_PARTS = {"ModelConfig": "config", "REMAT_POLICIES": "config",
          "Transformer": "transformer", "token_losses": "transformer",
          "count_params": "transformer", "project": "transformer", "run_blocks": "transformer",
          "abstract_model": "transformer"}
__all__ = sorted(_PARTS)


def __getattr__(name):
  if name in _PARTS:
    import importlib
    return getattr(importlib.import_module(f"lcx.model.{_PARTS[name]}"), name)
  raise AttributeError(f"module 'lcx.model' has no attribute {name!r}")
