"""The memory-mechanism interface and its registry.

A model with `model.segment_len` set runs a sequence as consecutive segments of that many tokens
and carries a state from one segment to the next (lcx.model.Transformer). A mechanism decides what
the state is and what each layer's attention sees of it:

  init_layers(batch)               each layer's state at the start of a sequence (a list)
  entries(layer_state, layer)      a KVCache of keys and values (with their positions and segment
                                   ids) the layer attends to before the segment's own, or None
  update(layer_state, k, v, positions, segment_ids, layer, log_gates)
                                   the layer's state after a segment whose rotated keys and
                                   values were k and v (and, for a bias made from the data,
                                   their log forget gates, which stored keys keep:
                                   cfg.gate_heads)
`layer` is the layer's index (an int, or a traced scalar when the layers run as a scan), for
mechanisms with per-layer parameters. A mechanism that combines its memory with the segment other
than as earlier keys (kNN's gated retrieval) overrides `attend`. One that acts on the whole
segment's input and output instead (RMT's memory tokens) keeps its state beside the layers'
(init_state) and overrides `wrap` (the segment's embeddings, positions and document ids before
the layers) and `unwrap` (the last layer's output: the segment's part, and the next state).

The entries carry explicit positions, so every position scheme composes with every mechanism,
and segment ids, so a query never sees memory from another document (0 marks an empty slot).
"""
import dataclasses
from typing import Any

from flax import nnx

from lcx.memory.cache import KVCache
from lcx.positions.bias import gate_row_bias
from lcx.registry import Registry


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
  """What a memory mechanism may know about the model."""
  n_layers: int
  n_heads: int
  head_dim: int
  segment_len: int
  n_kv_heads: int = 0  # the heads of the keys and values it holds (0: n_heads)
  d_model: int = 0
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  scan_layers: bool = False
  # the query heads whose log forget gates stored keys keep (a position bias made from the data,
  # FoX's: KVCache.empty's gate_heads); 0: none
  gate_heads: int = 0
  options: Any = None  # the mechanism's own Options, or None

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads


class MemoryMechanism(nnx.Module):
  """A mechanism with options of its own names them as `Options` (the convention in
  lcx.registry)."""
  Options: type | None = None

  def __init__(self, cfg: MemoryConfig, *, rngs: nnx.Rngs):
    del rngs
    self.cfg = cfg

  def init_state(self, batch: int) -> dict:
    """The whole state at the start of a sequence: the layers' (`layers`) and any other."""
    return {"layers": self.init_layers(batch)}

  def init_layers(self, batch: int) -> list:
    del batch
    return [None] * self.cfg.n_layers

  def wrap(self, state: dict, x_BCD, positions_BC, segment_ids_BC):
    """The segment as the layers see it: (x, positions, segment ids)."""
    del state
    return x_BCD, positions_BC, segment_ids_BC

  def unwrap(self, state: dict, x_BSD):
    """The last layer's output -> (the segment's rows, the next state)."""
    return x_BSD, state

  def entries(self, layer_state, layer):
    """What the layer attends to besides the segment (None: nothing)."""
    del layer_state, layer
    return None

  def update(self, layer_state, k_BCHK, v_BCHK, positions_BC, segment_ids_BC, layer,
             log_gates_BCH=None):
    del k_BCHK, v_BCHK, positions_BC, segment_ids_BC, layer, log_gates_BCH
    return layer_state

  def attend(self, layer_state, layer, q_BCHK, k_BCHK, v_BCHK, positions_BC, segment_ids_BC, *,
             attend, cache_attend, bias_fn, log_gates_BCH=None):
    """One layer's attention output for a segment: over the mechanism's entries, then the
    segment's own keys (`cache_attend` takes queries aligned to the end of longer keys), or over
    the segment alone (`attend`) when there are none. With log gates (a bias made from the
    data), the bias runs over the entries' gates and the segment's."""
    entries = self.entries(layer_state, layer)
    keys = (KVCache(k_BCHK, v_BCHK, positions_BC, segment_ids_BC, log_gates_BSH=log_gates_BCH)
            if entries is None else
            entries.concat(k_BCHK, v_BCHK, positions_BC, segment_ids_BC, log_gates_BCH))
    rows = {} if log_gates_BCH is None else dict(row_bias=gate_row_bias(
        keys.log_gates_BSH, keys.segment_ids_BS, positions_BC.shape[1]))
    return (attend if entries is None else cache_attend)(
        q_BCHK, keys.k_BSHK, keys.v_BSHK, q_positions_BQ=positions_BC,
        k_positions_BK=keys.positions_BS, q_segment_ids_BQ=segment_ids_BC,
        k_segment_ids_BK=keys.segment_ids_BS, bias_fn=bias_fn, **rows)

  @classmethod
  def memory_keys(cls, cfg: MemoryConfig) -> float:
    """Keys each query attends to besides its segment's, the mean over layers: what the memory
    adds to attention's FLOPs (lcx.metrics.flops_per_token). cfg.options is filled in."""
    del cfg
    return 0.0

  @classmethod
  def validate(cls, cfg: MemoryConfig, train_length: int) -> None:
    """Raise ValueError, one line naming the config field and what it allows, if the mechanism
    cannot work with this model at this training length."""
    del cfg, train_length


REGISTRY: Registry[MemoryMechanism] = Registry("memory mechanism", "model.memory")
register = REGISTRY.register
option_types = REGISTRY.option_types

# `none`: segments (if model.segment_len is set) attend within themselves only: the fixed-window
# baseline the mechanisms are compared with.
register("none")(MemoryMechanism)


def available() -> tuple[str, ...]:
  return REGISTRY.names()


def validate(name: str, cfg: MemoryConfig, train_length: int) -> None:
  if cfg.segment_len < 0 or cfg.segment_len > train_length:
    raise ValueError(f"config.model.segment_len={cfg.segment_len} must be in [0, data.seq_len="
                     f"{train_length}] (0: the whole sequence is one segment)")
  if name != "none" and cfg.segment_len == 0:
    raise ValueError(f"config.model.memory={name!r} carries a state between segments; set "
                     f"config.model.segment_len to a length in [1, {train_length}]")
  REGISTRY.lookup(name).validate(REGISTRY.with_options(name, cfg), train_length)


def check_options(name: str, sections: dict[str, object]) -> None:
  """Every mechanism's options as the config holds them, with `name` the chosen one (see
  lcx.registry)."""
  REGISTRY.check_sections(name, sections)


def make(name: str, cfg: MemoryConfig, *, rngs: nnx.Rngs) -> MemoryMechanism:
  return REGISTRY.lookup(name)(REGISTRY.with_options(name, cfg), rngs=rngs)


def memory_keys(name: str, cfg: MemoryConfig) -> float:
  """Keys a query attends to in the mechanism's memory, the mean over layers (0 for none)."""
  return REGISTRY.lookup(name).memory_keys(REGISTRY.with_options(name, cfg))
