"""Lets flax 0.12.8 import under a newer jax, for benchmarks/accelerator.sh on a host whose image
brings its own jax (and cannot install the pinned one): jax 0.11 renamed or dropped names in
jax.experimental.hijax that flax 0.12.8 builds classes on at import (HiPrimitive, MutableHiType,
AvalQDD, ...). lcx never turns on flax's hijax variables, so inert stand-ins for the missing names
are enough. With the pinned jax every name exists and this changes nothing. Python imports this
file at start-up when its folder is on PYTHONPATH; the script puts it there only after flax has
failed to import without it."""
try:
  import jax.experimental.hijax as _hijax

  class _Inert:
    """Stands in for a missing class (a base class flax subclasses, a value it annotates with)."""

    def __init__(self, *args, **kwargs):
      self.name = args[0] if args else None

    def __class_getitem__(cls, item):
      return cls

  _missing = [name for name in ("HiPrimitive", "MutableHiType", "AvalQDD", "AvalMutableQDD")
              if not hasattr(_hijax, name)]
  for _name in _missing:
    setattr(_hijax, _name, _Inert)
  if _missing:
    print(f"benchmarks/jax_compat: stand-ins for jax.experimental.hijax.{{{','.join(_missing)}}}")
except (ImportError, AttributeError) as _error:
  print(f"benchmarks/jax_compat: not applied ({_error})")
