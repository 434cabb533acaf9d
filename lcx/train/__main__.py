"""python -m lcx.train --config configs/pretrain.py:tiny --workdir DIR [--config.a.b=value ...]

The command around lcx.train.loop.train_and_evaluate: flags, multi-process start-up, one line per
failure.
"""
import sys

import jax
from absl import flags

from lcx import cli
from lcx import config as config_lib
from lcx import overrides as overrides_lib
from lcx.data.token_cache import DamagedCache
from lcx.runs.checkpoint import SaveFailed
from lcx.train import distributed
from lcx.train.loop import TrainingDiverged, train_and_evaluate

_CONFIG = flags.DEFINE_string("config", None, "Config file and preset, e.g. "
                              "configs/pretrain.py:tiny; fields are set with --config.a.b=value.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, for a multi-process run outside a "
    "TPU pod or SLURM (which are detected); with --num_processes and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0-based.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 60, "A multi-process run stops this many "
                                  "seconds after a peer process stops answering.")


def main(argv, overrides):
  cli.quiet_library_logs()
  if len(argv) > 1:
    sys.exit(f"lcx.train: unexpected arguments {argv[1:]}")
  if not _CONFIG.value or not _WORKDIR.value:
    sys.exit("lcx.train: --config and --workdir are required, e.g. "
             "--config configs/pretrain.py:tiny --workdir /tmp/run")
  try:
    config = overrides_lib.load_config(_CONFIG.value, overrides)
  except ValueError as e:
    sys.exit(f"lcx.train: {e}")
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           heartbeat_timeout_s=_HEARTBEAT.value)
  except ValueError as e:
    sys.exit(f"lcx.train: {e}")
  try:
    summary = train_and_evaluate(config, _WORKDIR.value)
  except (config_lib.ConfigError, TrainingDiverged, SaveFailed) as e:
    sys.exit(f"lcx.train: {e}")
  except DamagedCache as e:  # found on a block's first read: nothing of it reached the model
    sys.exit(f"lcx.train: {e}; the same command builds it again and resumes from the latest "
             "checkpoint (`python -m lcx.data.prepare` with this config builds it beforehand)")
  except jax.errors.JaxRuntimeError as e:
    if not cli.out_of_memory(e):
      raise
    sys.exit(f"lcx.train: out of device memory ({str(e).splitlines()[0][:160]}): the "
             "parameters, optimizer state and a step's activations (data.batch_size rows of "
             "data.seq_len tokens) must fit; fewer rows a step with train.grad_accum_steps, "
             "model.remat=full or a shorter data.seq_len fit in less; the checkpoints written "
             "so far are kept")
  except OSError as e:  # a full disk, a lost mount, a data_dir it cannot write
    sys.exit(f"lcx.train: {cli.os_error(e)}; the checkpoints written "
             "so far are kept")
  except KeyboardInterrupt:  # a second Ctrl-C, or one before the training loop
    print("lcx.train: interrupted; the checkpoints written so far are kept, and the same "
          "command resumes from the latest", file=sys.stderr)
    sys.exit(cli.INTERRUPTED_EXIT_CODE)
  if summary["interrupted"]:  # the status tells a sweep, whether or not the signal reached it
    print(f"lcx.train: interrupted; saved a checkpoint at step {summary['step']}, and the same "
          "command resumes from there", file=sys.stderr)
    sys.exit(cli.INTERRUPTED_EXIT_CODE)
  if summary["final_loss"] is None:
    print(f"\nnothing to train: {summary['workdir']} is already at step {summary['step']}")
  else:
    print(f"\n{'stopped' if summary['preempted'] else 'finished'} at step {summary['step']}: "
          f"loss {summary['final_loss']:.4f}, {summary['tokens_per_second']:,.0f} tokens/s, "
          f"MFU {100 * summary['mfu']:.1f}% (PaLM's count; {100 * summary['mfu_causal']:.1f}% "
          "counting the causal half of attention)")
  print(f"outputs in {summary['workdir']}:\n  metrics      {summary['metrics']}\n"
        f"  checkpoints  {summary['checkpoints']}\n  config       {summary['config']}")
  if summary["wandb"]:
    print(f"  wandb        {summary['wandb']}")
  if summary["preempted"]:
    sys.exit(cli.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  cli.run(main)
