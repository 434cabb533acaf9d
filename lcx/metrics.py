"""FLOPs and MFU accounting, and the writers for logged metrics (jsonl, W&B, terminal)."""
import json
import os
import pathlib
import secrets
import time

import jax
import jax.numpy as jnp
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P


def flops_per_token(non_embedding_params: int, n_layers: int, attention_width: int,
                    seq_len: int) -> float:
  """Training FLOPs per token, PaLM's formula: 6 N + 12 n_layers d_attn L (attention included)."""
  return 6.0 * non_embedding_params + 12.0 * n_layers * attention_width * seq_len


def measure_peak_flops(mesh, dtype: str = "float32", size: int | None = None,
                       iters: int = 3) -> float:
  """FLOP/s of the whole mesh on one square matmul per device, the best of `iters` runs."""
  devices = mesh.devices.size
  size = size or (2048 if jax.default_backend() == "cpu" else 8192)
  sharding = NamedSharding(mesh, P(mesh.axis_names))
  matmul = jax.jit(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), out_shardings=sharding)
  a = jax.device_put(jnp.ones((devices, size, size), dtype), sharding)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(iters):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 * devices / best


class JsonlWriter:
  """workdir/metrics.jsonl: one JSON object per logged step."""

  def __init__(self, path: pathlib.Path, resume_step: int):
    self.path = path
    if path.exists():
      # Steps after the checkpoint we resume from will be logged again, identically.
      kept = [line for line in path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
      tmp = path.with_suffix(".tmp")
      tmp.write_text("".join(line + "\n" for line in kept))
      os.replace(tmp, path)
    self.file = open(path, "a", buffering=1)

  def write(self, record: dict) -> None:
    self.file.write(json.dumps(record) + "\n")

  def close(self) -> None:
    self.file.close()


def read_jsonl(path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


class WandbWriter:
  """Logs to W&B; offline without an API key; resumes the same run when the workdir resumes."""

  def __init__(self, wandb_config, workdir: pathlib.Path, resolved_config: dict, run_name: str):
    mode = wandb_config.mode
    if mode == "auto":
      mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
    self.run = None
    self.directory = None  # where W&B writes this run, None when disabled
    if mode == "disabled":
      return
    import wandb  # imported only when used: it is slow to import
    id_file = workdir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    id_file.write_text(run_id)
    self.run = wandb.init(
        mode=mode, dir=str(workdir), id=run_id, resume="allow", config=resolved_config,
        project=wandb_config.project, entity=wandb_config.entity or None,
        name=wandb_config.name or run_name, group=wandb_config.group or None,
        job_type=wandb_config.job_type, tags=list(wandb_config.tags))
    self.directory = os.path.dirname(self.run.dir)  # run.dir is its files/ folder

  def write(self, record: dict) -> None:
    if self.run is not None:
      self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

  def close(self) -> None:
    if self.run is not None:
      self.run.finish()


def _has_wandb_key() -> bool:
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
