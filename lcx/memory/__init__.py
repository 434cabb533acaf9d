"""Memory mechanisms (`model.memory`), the second axis next to position schemes: the model runs a
sequence as segments of `model.segment_len` tokens and carries a state between them (see base)."""
from lcx.memory.base import (MemoryConfig, MemoryMechanism, available, check_options, make,
                             memory_keys, option_types, register, validate)
from lcx.memory.cache import KVCache
from lcx.memory import compressive, knn, rmt, xl  # noqa: F401  (registers the mechanisms)

__all__ = ["MemoryConfig", "MemoryMechanism", "KVCache", "available", "check_options", "make",
           "memory_keys", "option_types", "register", "validate"]
