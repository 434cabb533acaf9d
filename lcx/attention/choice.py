"""What `model.attention` runs: a named kernel, checked for the scheme and the backend, or `auto`'s
choice per call, from measured speed.

A kernel table holds, for one kind of device, the time of one attention layer (forward and
backward, at a model preset's shapes) for every kernel that can run there, per position scheme and
sequence length. `python -m lcx.bench.kernels` measures one and writes
lcx/attention/tables/<device>.json; benchmarks/accelerator.sh does so on a GPU or TPU host. `auto`
then runs, for a scheme and a length, the kernel measured fastest among those that can take the
call, at the nearest measured length at or above it (beyond the longest measured length, the
longest's ranking among the kernels whose memory grows linearly: dense is never sent past where
it was measured). Where the device has no table, or the table no row for the scheme, `auto`
keeps its fixed order of preference (the kernels' records, lcx.attention.kernels).

Every host of a job reads the same table (the same device kind and checkout), so all hosts choose
alike. LCX_KERNEL_TABLE=FILE makes every process use that table instead (set it on every host).
"""
import dataclasses
import functools
import json
import logging
import os
import pathlib
import re

import jax

from lcx import positions
from lcx.attention import kernels
from lcx.attention.kernels import accepts, cannot_run, check, takes_call, takes_local
from lcx.attention.tiles import DEFAULT_BLOCK
from lcx.positions.bias import BiasKind

TABLE_DIR = pathlib.Path(__file__).with_name("tables")
ENV = "LCX_KERNEL_TABLE"
NO_BIAS = "none"  # the table key of every scheme without a bias: their attention is the same


def device_name(device=None) -> str:
  """The table name of a device: its platform and kind, e.g. gpu-nvidia-h100-80gb-hbm3, cpu."""
  device = device or jax.local_devices()[0]
  kind = re.sub(r"[^a-z0-9]+", "-", device.device_kind.lower()).strip("-")
  return device.platform if kind in ("", device.platform) else f"{device.platform}-{kind}"


@dataclasses.dataclass(frozen=True)
class Table:
  device: str
  source: str  # where it was read from
  # scheme key -> length -> kernel -> seconds (one layer, forward + backward)
  seconds: dict[str, dict[int, dict[str, float]]]

  def fastest(self, scheme_key: str, length: int, candidates) -> tuple[str, int] | None:
    """The fastest measured kernel among `candidates` for the scheme at `length`, with the
    measured length its ranking comes from; None where nothing measured applies."""
    rows = self.seconds.get(scheme_key)
    if not rows:
      return None
    at = min((n for n in rows if n >= length), default=None)
    beyond = at is None
    at = max(rows) if beyond else at
    times = {k: s for k, s in rows[at].items()
             if k in candidates and not (beyond and k in kernels.QUADRATIC)}
    return (min(times, key=times.get), at) if times else None


def parse(data: dict, source: str) -> Table:
  """A table from its JSON form (what lcx.bench.kernels writes), checked."""
  try:
    seconds = {scheme: {int(length): {str(k): float(s) for k, s in kernels.items()}
                        for length, kernels in lengths.items()}
               for scheme, lengths in data["seconds"].items()}
    return Table(device=str(data["device"]), source=source, seconds=seconds)
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise ValueError(f"kernel table {source} is not one lcx.bench.kernels wrote ({e!r}); "
                     f"measure it again with python -m lcx.bench.kernels") from None


@functools.lru_cache(maxsize=None)
def load(device: str) -> Table | None:
  """The table for `device`: LCX_KERNEL_TABLE's file if set (it must be this device's), else
  lcx/attention/tables/<device>.json if there is one, else None."""
  named = os.environ.get(ENV)
  path = pathlib.Path(named) if named else TABLE_DIR / f"{device}.json"
  if not path.exists():
    if named:
      raise ValueError(f"{ENV}={named}: no such file; unset it to use lcx/attention/tables/, or "
                       f"write one with python -m lcx.bench.kernels --out={named}")
    return None
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"kernel table {path} cannot be read ({e}); measure it again with "
                     f"python -m lcx.bench.kernels") from None
  table = parse(data, str(path))
  if table.device != device:
    raise ValueError(f"kernel table {path} was measured on {table.device}, this device is "
                     f"{device}; unset {ENV} or measure this one with python -m lcx.bench.kernels")
  return table


def select(name: str, *, bias: BiasKind | None, backend: str | None = None,
           local: str = "") -> str:
  """The implementation model.attention=name runs for a scheme whose bias is of kind `bias`
  (None: no bias): a named one, refused with the reason if it cannot work here; for `auto`, the
  first of its fixed order that takes the scheme here (logging why it passed over one), which
  runs where no kernel table says otherwise (Choice.kernel decides per call). It may build the
  native kernel to find out, so the model calls it once, when it is built."""
  return _select(name, bias, backend or jax.default_backend(), local)


@functools.lru_cache(maxsize=None)
def _select(name: str, bias: BiasKind | None, backend: str, local: str = "") -> str:
  # Cached: models built several times in a process (shapes, init, evaluation) choose once and
  # log once.
  check(name, bias=bias, backend=backend, local=local)
  if name != "auto":
    if reason := cannot_run(name, backend):
      raise ValueError(f"model.attention={name!r} cannot run here: {reason}; use auto or blockwise")
    return name
  log = logging.getLogger("lcx")
  for candidate in kernels.preference(backend):
    if reason := accepts(candidate, bias) or takes_local(candidate, local, named=False):
      log.info("attention=auto: %s cannot take this position scheme's bias or local layers "
               "(%s)", candidate, reason)
    elif reason := cannot_run(candidate, backend):
      log.warning("attention=auto: %s cannot run here (%s); the next choice runs", candidate,
                  reason)
    else:
      return candidate
  return kernels.FALLBACK


@dataclasses.dataclass(frozen=True)
class Choice:
  """model.attention resolved for one position scheme on this backend (see `choose`): a named
  kernel runs every call; `auto` picks per call from the lengths and whether documents are
  packed, the fastest measured kernel where a table has one, else the first of its fixed order
  that can take the call."""
  requested: str
  scheme: str  # the kernel-table key: the scheme's name, or "none" for a scheme without a bias
  bias: BiasKind | None
  backend: str
  block: int = DEFAULT_BLOCK
  local: str = ""  # for local layers ("window", "chunk"): only kernels that take them
  # The measured kernel table auto chooses from (None: its fixed order).
  table: Table | None = dataclasses.field(default=None, compare=False, hash=False)

  def kernel(self, q_len: int, k_len: int | None = None, *, packed: bool = False,
             causal: bool = True, cache: bool = False, offset: bool = False) -> str:
    """The kernel a call with q_len queries and k_len keys runs (`cache`: a KV cache's call,
    where only dense and the tiled kernels take queries aligned to the end of the keys;
    `offset`: a traced query offset, context parallelism's)."""
    if self.requested != "auto":
      return self.requested
    k_len = k_len or q_len
    usable, passed = [], []
    for name in kernels.auto_candidates(self.backend):
      if (accepts(name, self.bias) or cannot_run(name, self.backend)
          or takes_local(name, self.local, named=False)):
        continue  # said once, when the model was built (select)
      if cache and not kernels.KERNELS[name].takes_cache:
        reason = "it takes no queries aligned to the end of longer keys"
      elif offset and (not kernels.KERNELS[name].takes_offset or name in kernels.QUADRATIC):
        # (the call's keys are a device's own: their gathered length is not what a table
        # measured, so a quadratic kernel is left to be named)
        reason = "context parallelism runs a tiled kernel that takes a query offset"
      else:
        reason = takes_call(name, q_len=q_len, k_len=k_len, packed=packed, causal=causal,
                            block=self.block)
      if reason:
        passed.append(f"{name}: {reason}")
      else:
        usable.append(name)
    measured = self.table.fastest(self.scheme, k_len, usable) if self.table else None
    if measured:
      name, at = measured
      why = f"the fastest measured at L={at} in {self.table.source}"
    else:
      name = next((n for n in kernels.preference(self.backend) if n in usable), kernels.FALLBACK)
      why = ("its fixed order (no kernel table for this device: python -m lcx.bench.kernels "
             "measures one)" if self.table is None else
             f"its fixed order ({self.table.source} has no row for {self.scheme})")
    if passed:
      why += f"; passed over {'; '.join(passed)}"
    call = ", KV cache" if cache else ", at an offset into gathered keys" if offset else ""
    _log_choice(self.backend, self.scheme, q_len, k_len, packed, call, name, why)
    return name


@functools.lru_cache(maxsize=None)
def _log_choice(backend, scheme, q_len, k_len, packed, call, name, why):
  # Cached: a length is traced many times (shapes, init, every jit), its choice logged once.
  logging.getLogger("lcx").info(
      "attention=auto on %s, %s, %d queries x %d keys%s%s: %s, %s", backend, scheme, q_len, k_len,
      ", packed" if packed else "", call, name, why)


def choose(name: str, *, scheme: str, block: int = DEFAULT_BLOCK,
           backend: str | None = None, local: str = "") -> Choice:
  """model.attention=name for position scheme `scheme` (and `local` layers: "window", "chunk"),
  checked as `select` checks it; `auto` reads this device's kernel table here, so a bad one is
  refused when the model is built."""
  backend = backend or jax.default_backend()
  bias = positions.bias_kind(scheme)
  select(name, bias=bias, backend=backend, local=local)
  table = load(device_name()) if name == "auto" and backend == jax.default_backend() else None
  return Choice(name, scheme if bias is not None else NO_BIAS, bias, backend, block, local, table)


def make(choice: Choice, *, cache: bool = False):
  """The attention function of a Choice; `cache`: for a KV cache (decoding), queries aligned to
  the end of a longer key buffer whose unwritten slots are masked by segment id, which dense and
  the tiled kernels take (a named cuDNN or splash hands those calls to blockwise)."""
  if choice.requested != "auto":
    name = choice.requested
    if cache and not kernels.KERNELS[name].takes_cache:
      name = kernels.FALLBACK
    return kernels.with_block(name, choice.block)

  def attend(q_BQHK, k_BKHK, v_BKHK, *, q_segment_ids_BQ=None, causal=True, **kw):
    name = choice.kernel(q_BQHK.shape[1], k_BKHK.shape[1], packed=q_segment_ids_BQ is not None,
                         causal=causal, cache=cache, offset=kw.get("q_offset") is not None)
    return kernels.with_block(name, choice.block)(
        q_BQHK, k_BKHK, v_BKHK, q_segment_ids_BQ=q_segment_ids_BQ, causal=causal, **kw)

  return attend
