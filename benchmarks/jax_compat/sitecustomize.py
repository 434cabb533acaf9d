"""Lets flax 0.12.8 import under a newer jax, for benchmarks/accelerator.sh on a host whose image
brings its own jax (and cannot install the pinned one): jax 0.11 dropped names from
jax.experimental.hijax that flax 0.12.8 builds classes on at import. lcx never turns on flax's
hijax variables, so inert stand-ins for the missing names are enough. With the pinned jax every
name exists and this changes nothing. Python imports this file at start-up when its folder is on
PYTHONPATH; the script puts it there only after flax has failed to import without it."""
try:
  import jax.experimental.hijax as _hijax

  class _UnusedPrimitive:
    def __init__(self, name, *args, **kwargs):
      self.name = name

  for _name, _stand_in in dict(HiPrimitive=_UnusedPrimitive, MutableHiType=_hijax.HiType,
                               AvalQDD=object, AvalMutableQDD=object).items():
    if not hasattr(_hijax, _name):
      setattr(_hijax, _name, _stand_in)
except (ImportError, AttributeError) as _error:
  print(f"benchmarks/jax_compat: not applied ({_error})")
