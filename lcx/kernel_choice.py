"""What `model.attention=auto` runs, from measured speed.

A kernel table holds, for one kind of device, the time of one attention layer (forward and
backward, at a model preset's shapes) for every kernel that can run there, per position scheme and
sequence length. `python -m lcx.bench.kernels` measures one and writes
lcx/kernel_tables/<device>.json; benchmarks/accelerator.sh does so on a GPU or TPU host. `auto`
then runs, for a scheme and a length, the kernel measured fastest among those that can take the
call, at the nearest measured length at or above it (beyond the longest measured length, the
longest's ranking among the kernels whose memory grows linearly: dense is never sent past where
it was measured). Where the device has no table, or the table no row for the scheme, `auto`
keeps its fixed order of preference (lcx.attention).

Every host of a job reads the same table (the same device kind and checkout), so all hosts choose
alike. LCX_KERNEL_TABLE=FILE makes every process use that table instead (set it on every host).
"""
import dataclasses
import functools
import json
import os
import pathlib
import re

import jax

TABLE_DIR = pathlib.Path(__file__).with_name("kernel_tables")
ENV = "LCX_KERNEL_TABLE"
# Kernels whose memory grows with the square of the length: never chosen past the lengths at
# which they were measured.
QUADRATIC = ("dense",)
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
             if k in candidates and not (beyond and k in QUADRATIC)}
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
  lcx/kernel_tables/<device>.json if there is one, else None."""
  named = os.environ.get(ENV)
  path = pathlib.Path(named) if named else TABLE_DIR / f"{device}.json"
  if not path.exists():
    if named:
      raise ValueError(f"{ENV}={named}: no such file; unset it to use lcx/kernel_tables/, or "
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
