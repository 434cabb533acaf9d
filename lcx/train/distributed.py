"""Start JAX's multi-controller runtime before any device is used.

On Cloud TPU pods and under SLURM, jax.distributed.initialize() finds its peers by itself; elsewhere
(several processes on one machine, other clusters) the coordinator address, the number of
processes and this process's id are given explicitly.
"""
import os

import jax

CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               timeout_s: int = 120, heartbeat_timeout_s: int = 60) -> None:
  """Explicit arguments start a multi-process run; with none, a detected cluster does; a single
  process on its own starts nothing. A process whose peer stops answering for heartbeat_timeout_s
  is stopped by the runtime, so a dead host ends the job instead of hanging it."""
  explicit = bool(coordinator_address)
  if explicit:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--coordinator_address needs --num_processes >= 1 and 0 <= --process_id < "
                       f"num_processes; got num_processes={num_processes}, process_id={process_id}")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  elif any(os.environ.get(name) for name in CLUSTER_ENV):
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
