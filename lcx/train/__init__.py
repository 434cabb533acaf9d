"""Training: the loop (loop.py), the jitted step and its shardings (step.py), multi-process
start-up (distributed.py); `python -m lcx.train` is __main__.py.

`from lcx.train import train_and_evaluate` imports the loop when first asked for.
"""
__all__ = ["TrainingDiverged", "train_and_evaluate"]


def __getattr__(name):
  if name in __all__:
    from lcx.train import loop
    return getattr(loop, name)
  raise AttributeError(f"module 'lcx.train' has no attribute {name!r}")
