"""FLOPs and MFU accounting, and the writers for logged metrics (jsonl, W&B, terminal)."""
import json
import logging
import os
import pathlib
import resource
import secrets
import time

import jax
import jax.numpy as jnp
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from lcx.files import naming, write_atomic
from lcx.runs import layout

log = logging.getLogger(__name__)


def flops_per_token(non_embedding_params: int, n_layers: int, attention_width: int,
                    seq_len: int, causal: bool = False, memory_keys: float = 0.0) -> float:
  """Training FLOPs per token. PaLM's formula, 6 N + 12 n_layers d_attn L, counts every query
  against every key (comparable with other codebases' MFU); `causal` counts the half that causal
  kernels compute (6 n_layers d_attn L), the work actually done. A model in segments passes its
  segment length as L and the keys its memory adds per query (the mean over layers), which every
  query sees whole: 12 n_layers d_attn M either way. d_attn is the query heads' width: with
  grouped-query attention every query head still meets every key; only N (the smaller key/value
  projections) shrinks."""
  window = (6.0 if causal else 12.0) * seq_len + 12.0 * memory_keys
  return 6.0 * non_embedding_params + window * n_layers * attention_width


def measure_peak_flops(mesh, dtype: str = "float32", size: int | None = None,
                       iters: int = 3) -> float:
  """FLOP/s of the whole mesh on one square matmul per device, the best of `iters` runs."""
  devices = mesh.devices.size
  size = size or (2048 if jax.default_backend() == "cpu" else 8192)
  sharding = NamedSharding(mesh, P(mesh.axis_names))
  matmul = jax.jit(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), out_shardings=sharding)
  # Built by a jitted function: on several processes device_put cannot place a host array.
  a = jax.jit(lambda: jnp.ones((devices, size, size), dtype), out_shardings=sharding)()
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(iters):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 * devices / best


def peak_memory_bytes() -> int:
  """Peak memory so far: the largest device's peak on accelerators, the process's peak resident
  set on CPU (where device buffers live in host memory)."""
  devices = jax.local_devices()
  stats = [d.memory_stats() for d in devices if hasattr(d, "memory_stats")]
  peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
  if peaks:
    return int(max(peaks))
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class JsonlWriter:
  """workdir/metrics.jsonl: one JSON object per logged step, appended as the run goes.

  On resume, rows after the step resumed from (they will be logged again) move to
  <name>.superseded.jsonl, and a line cut off by a crash is dropped with a warning. A file
  deleted, replaced or truncated while the run writes it is written again with every row it held.
  """

  def __init__(self, path: pathlib.Path, resume_step: int):
    self.path = path
    self.lines, superseded = [], []
    for line in _lines(path):
      row = _parse(line, path)
      if row is not None:
        (self.lines if row.get("step", 0) <= resume_step else superseded).append(line)
    if superseded:
      superseded_path = path.with_suffix(".superseded.jsonl")
      with naming(superseded_path), open(superseded_path, "a") as f:
        f.writelines(line + "\n" for line in superseded)
      log.info("%s: %d rows after step %d moved to %s; they are logged again", path,
               len(superseded), resume_step, path.with_suffix(".superseded.jsonl"))
    self._rewrite()

  def _rewrite(self) -> None:
    text = "".join(line + "\n" for line in self.lines)
    write_atomic(self.path, text)
    self.file = open(self.path, "a", buffering=1)
    self.size = len(text.encode())

  def _changed(self) -> bool:
    """Whether the file is no longer what this writer wrote: deleted, replaced or truncated."""
    try:
      stat = os.stat(self.path)
    except FileNotFoundError:
      return True
    return stat.st_ino != os.fstat(self.file.fileno()).st_ino or stat.st_size != self.size

  def write(self, record: dict) -> None:
    if self._changed():
      log.warning("%s was deleted or changed during the run; writing it again with its %d rows",
                  self.path, len(self.lines))
      self.file.close()
      self._rewrite()
    line = json.dumps(record) + "\n"
    with naming(self.path):
      self.file.write(line)
    self.size += len(line.encode())
    self.lines.append(line[:-1])

  def close(self) -> None:
    with naming(self.path):
      self.file.close()


def _lines(path: pathlib.Path) -> list[str]:
  return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _parse(line: str, path) -> dict | None:
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    log.warning("%s: dropped a line that is not complete JSON (cut off by a crash?): %.80s", path,
                line)
    return None


def read_jsonl(path) -> list[dict]:
  """The rows of a JSON-lines file; a line cut off by a crash is skipped with a warning."""
  path = pathlib.Path(path)
  return [row for row in (_parse(line, path) for line in _lines(path)) if row is not None]


class WandbWriter:
  """Logs to W&B; offline without an API key; resumes the same run when the workdir resumes."""

  def __init__(self, wandb_config, workdir: pathlib.Path, resolved_config: dict, run_name: str):
    mode = wandb_mode(wandb_config)
    self.run = None
    self.directory = None  # where W&B writes this run, None when disabled
    if mode == "disabled":
      return
    id_file = workdir / layout.WANDB_ID
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    self.run = init_wandb(
        mode, wandb_config.init_timeout_s, dir=str(workdir), id=run_id, resume="allow", config=resolved_config,
        project=wandb_config.project, entity=wandb_config.entity or None,
        name=wandb_config.name or run_name, group=wandb_config.group or None,
        job_type=wandb_config.job_type, tags=list(wandb_config.tags))
    self.directory = os.path.dirname(self.run.dir)  # run.dir is its files/ folder
    with naming(id_file):
      id_file.write_text(self.run.id)  # a fallback to offline may have taken a new id

  def write(self, record: dict) -> None:
    if self.run is not None:
      self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

  def close(self) -> None:
    if self.run is not None:
      self.run.finish()


def init_wandb(mode: str, timeout_s: float, **kwargs):
  """wandb.init; an online run that cannot reach the server within timeout_s falls back to
  offline with one warning (`wandb sync` uploads it later) instead of losing the run."""
  import wandb  # imported only when used: it is slow to import
  _no_wandb_analytics()
  # silent: W&B otherwise asks the server who is logged in, for its greeting, with a wait of its
  # own (10 s) that init_timeout does not bound; lcx says where the run goes instead.
  settings = wandb.Settings(init_timeout=timeout_s, silent=True)
  try:
    run = wandb.init(mode=mode, settings=settings, **kwargs)
  except Exception as e:  # wandb raises CommError, UsageError, timeouts, ...
    if mode != "online":
      raise
    wandb.teardown()
    # The failed run may still hold its id in W&B's service process: the offline run takes a new
    # one (on a resume, the rest of the run is logged under it; wandb_run_id records it).
    run = wandb.init(mode="offline", settings=settings, **{**kwargs, "id": secrets.token_hex(4)})
    log.warning("W&B online logging failed within wandb.init_timeout_s=%g (%s: %s); logging "
                "offline instead, upload later with `wandb sync %s`", timeout_s,
                type(e).__name__, str(e).splitlines()[0][:200], os.path.dirname(run.dir))
    return run
  log.info("W&B: logging %s to %s", mode, run.url if mode == "online" else
           os.path.dirname(run.dir))
  return run


def _no_wandb_analytics() -> None:
  """Turns off the W&B SDK's reports on itself (none of them is the run's). After an online
  init that failed they would report the failure to the server that did not answer, at exit,
  unbounded by init_timeout: 20 s more before the process ends (wandb 0.31)."""
  try:
    from wandb.analytics.opentelemetry import opentelemetry_proxy
    opentelemetry_proxy.disable()
  except (ImportError, AttributeError):  # a W&B without them
    pass


def wandb_mode(wandb_config) -> str:
  """auto: WANDB_MODE when set, else online with an API key and offline without."""
  if wandb_config.mode != "auto":
    return wandb_config.mode
  return os.environ.get("WANDB_MODE") or ("online" if has_wandb_key() else "offline")


def log_evaluation_to_wandb(wandb_config, workdir: pathlib.Path, results: dict,
                            images: dict[str, pathlib.Path]) -> None:
  """An evaluation as its own W&B run (job_type "evaluate", grouped with its training run): a
  table of perplexity by length, one of retrieval accuracy by task, length and depth, summaries,
  and the figures."""
  mode = wandb_mode(wandb_config)
  if mode == "disabled":
    return
  import wandb
  run = init_wandb(
      mode, wandb_config.init_timeout_s, dir=str(workdir / layout.EVAL), project=wandb_config.project,
      entity=wandb_config.entity or None, group=wandb_config.group or workdir.name,
      job_type="evaluate", name=f"{wandb_config.name or workdir.name}/{results['name']}",
      tags=list(wandb_config.tags) + [results["scheme"]],
      config={k: results[k] for k in ("run", "name", "checkpoint_step", "scheme", "scheme_options",
                                      "train_length", "overrides", "eval_options")})
  columns = ["kind", "length", "multiple", "loss", "perplexity", "bits_per_byte", "tokens",
             "not_applicable"]
  table = wandb.Table(columns=columns)
  for kind in ("perplexity", "sliding"):
    for row in results[kind]:
      table.add_data(kind, *(row.get(c) for c in columns[1:]))
  logged = {"perplexity_by_length": table}
  columns = ["task", "style", "length", "multiple", "depth", "exact", "ranked"]
  retrieval = wandb.Table(columns=columns)
  for key, grid in results["retrieval"].items():
    for i, length in enumerate(grid["lengths"]):
      for j, depth in enumerate(grid["depths"]):
        retrieval.add_data(grid["task"], grid["style"], length, length / results["base_length"],
                           depth, grid["exact"][i][j], grid["ranked"][i][j])
    logged[f"retrieval/{key}/longest_at_90"] = grid["longest_at_90"]
    exact_1x = grid["exact"][grid["lengths"].index(results["base_length"])] if (
        results["base_length"] in grid["lengths"]) else None
    if exact_1x and None not in exact_1x:
      logged[f"retrieval/{key}/exact_1x"] = sum(exact_1x) / len(exact_1x)
  logged["retrieval_by_length_and_depth"] = retrieval
  for key, path in images.items():
    if path.suffix == ".png":
      logged[f"plots/{key}"] = wandb.Image(str(path))
  run.log(logged)
  run.finish()


def has_wandb_key() -> bool:
  if os.environ.get("WANDB_API_KEY"):
    return True
  netrc = pathlib.Path.home() / ".netrc"
  return netrc.exists() and "api.wandb.ai" in netrc.read_text()


class ProgressBar:
  """Terminal progress over steps with loss, tokens/s and MFU."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self.bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                         disable=not enabled, mininterval=0.5)

  def update(self, steps: int, record: dict | None = None) -> None:
    if record is not None:
      self.bar.set_postfix(loss=f"{record['loss']:.4f}",
                           tok_s=f"{record['tokens_per_second']:,.0f}",
                           mfu=f"{100 * record['mfu']:.1f}%", refresh=False)
    self.bar.update(steps)

  def close(self) -> None:
    self.bar.close()
