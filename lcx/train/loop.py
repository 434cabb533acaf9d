"""The training loop: `train_and_evaluate(config, workdir)` trains (or resumes) the run in workdir.

Everything it uses is importable on its own; `python -m lcx.train` (__main__.py) is its command.
"""
import contextlib
import json
import logging
import pathlib
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from lcx import config as config_lib
from lcx.runs import layout
from lcx.runs import restore as runs
from lcx.runs import workdir as workdir_lib
from lcx.runs.checkpoint import Checkpointer
from lcx.data.sources import Documents
from lcx.data.mixture import RetrievalMixture
from lcx.data.stream import PackedStream
from lcx.data.tokenizers import make_tokenizer
from lcx.evaluate.during_training import TrainingEval
from lcx.files import write_atomic
from lcx.metrics import (JsonlWriter, ProgressBar, WandbWriter, flops_per_token,
                         measure_peak_flops, peak_memory_bytes)
from lcx.model import count_params
from lcx.sharding import make_mesh
from lcx.train.step import TrainProgram

log = logging.getLogger("lcx.train")


def _mixture(c, docs, tokenizer) -> RetrievalMixture | None:
  cfg = config_lib.mixture_config(c)
  if not cfg.fraction:
    return None
  return RetrievalMixture(cfg, docs, tokenizer, seq_len=c.data.seq_len, seed=c.seed,
                          document_mask=c.data.document_mask)


class TrainingDiverged(FloatingPointError):
  """The loss or gradient norm stopped being finite."""


class _StopFlag:
  """SIGTERM (preemption) -> the loop saves a checkpoint and returns. So does a first Ctrl-C
  (SIGINT) in one process, at the end of the step it came in (an interrupt raised anywhere else,
  an orbax save or a worker thread, could leave the process unable to exit); a second one
  interrupts at once.

  One process catches the signal itself. Several processes leave it to JAX's preemption notifier,
  which tells every process and agrees on one step at which all of them stop: one consistent
  checkpoint even when a single host is preempted.
  """

  def __init__(self):
    self.requested = self.interrupted = False
    self._previous = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    if not self._multiprocess:
      try:
        self._previous = {s: signal.signal(s, self._handle)
                          for s in (signal.SIGTERM, signal.SIGINT)}
      except ValueError:  # not the main thread: no signal handling there
        self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    if signum == signal.SIGINT:
      self.interrupted = True
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def reached(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step`; called by every process at every step."""
    if self._multiprocess:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _resolve(config, devices):
  """(resolved config, devices); bad input becomes one ConfigError line. Builds nothing."""
  devices = list(jax.devices() if devices is None else devices)
  if config.init_from:
    config = config_lib.inherit_architecture(config, runs.saved_config(config.init_from))
    config.init_from = str(pathlib.Path(config.init_from).expanduser().resolve())
  return config_lib.resolve(config, len(devices)), devices


def _build(c, devices):
  """Mesh, data stream, program and the evaluation during training (or None) of a resolved
  config."""
  try:
    if (jax.process_count() > 1 and c.mesh.context > 1
        and c.mesh.context * c.mesh.tensor > jax.local_device_count()):
      # each process feeds its own rows whole (the data stream splits rows, not lengths)
      raise config_lib.ConfigError(
          f"config.mesh.context={c.mesh.context} x mesh.tensor={c.mesh.tensor} spans hosts; "
          f"context parallelism shards a sequence within one host's {jax.local_device_count()} "
          "devices: make context x tensor at most that")
    mesh = make_mesh(c.mesh, devices)
    tokenizer = make_tokenizer(c.data.tokenizer)
    docs = Documents(c.data.name, "train", data_dir=c.data.data_dir, text_dir=c.data.text_dir,
                     text_glob=c.data.text_glob, text_key=c.data.text_key)
    stream = PackedStream(docs, tokenizer, seq_len=c.data.seq_len,
                          global_batch=c.data.batch_size, seed=c.seed,
                          document_mask=c.data.document_mask,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          cache_dir=str(pathlib.Path(c.data.data_dir).expanduser() / "lcx_cache"),
                          mixture=_mixture(c, docs, tokenizer),
                          pose_target_len=c.data.pose_target_len)
    program = TrainProgram(config_lib.model_config(c), config_lib.optimizer_config(c), mesh,
                           tuple(c.mesh.rules), grad_accum_steps=c.train.grad_accum_steps,
                           document_mask=c.data.document_mask, seed=c.seed)
  except config_lib.ConfigError:
    raise
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  evaluator = None
  if c.eval.every_steps:
    try:
      evaluator = TrainingEval(c, program.model_cfg, mesh, program.rules)
    except ValueError as e:
      raise config_lib.ConfigError(f"config.eval.every_steps={c.eval.every_steps} needs a "
                                   f"validation split to score ({e}); set it to 0") from None
  return mesh, stream, program, evaluator


class _Recorder:
  """Checks each step's metrics (fetched a step late, so the host never waits on the device) and
  writes a record every log_every steps. Throughput is measured between records; the first
  window includes compilation."""

  def __init__(self, writers, progress, *, log_every: int, last_step: int, tokens_per_step: int,
               flops_per_token: float, causal_flops_per_token: float, peak_flops: float,
               train_seconds):
    self.writers, self.progress, self.train_seconds = writers, progress, train_seconds
    self.log_every, self.last_step = log_every, last_step
    self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak_flops
    self.causal_flops_per_token = causal_flops_per_token
    self.window_start, self.window_steps = time.perf_counter(), 0
    self.last = None

  def __call__(self, step: int, metrics) -> None:
    m = jax.device_get(metrics)
    if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) and m["state_finite"]):
      raise TrainingDiverged(
          f"step {step} is not finite (loss {float(m['loss'])}, gradient norm "
          f"{float(m['grad_norm'])}, state after it finite: {bool(m['state_finite'])}); stopped "
          "without checkpointing this state (lower train.learning_rate or raise "
          "train.warmup_steps)")
    self.window_steps += 1
    if step % self.log_every and step != self.last_step:
      self.progress.update(1)
      return
    now = time.perf_counter()
    elapsed = now - self.window_start
    tokens_per_second = self.window_steps * self.tokens_per_step / max(elapsed, 1e-9)
    self.last = {
        "step": step, "loss": float(m["loss"]), "learning_rate": float(m["learning_rate"]),
        "grad_norm": float(m["grad_norm"]), "tokens_per_second": tokens_per_second,
        "step_time_s": elapsed / self.window_steps, "tokens_seen": step * self.tokens_per_step,
        "flops_per_token": self.flops_per_token,
        "flops_seen": step * self.tokens_per_step * self.flops_per_token,
        # mfu: PaLM's count (full attention); mfu_causal: the causal half the kernels compute.
        "mfu": tokens_per_second * self.flops_per_token / self.peak,
        "mfu_causal": tokens_per_second * self.causal_flops_per_token / self.peak,
        "peak_flops": self.peak,
        "peak_memory_bytes": peak_memory_bytes(), "train_seconds": self.train_seconds()}
    for writer in self.writers:
      writer.write(self.last)
    self.window_start, self.window_steps = now, 0
    self.progress.update(1, self.last)


class _TrainClock:
  """Wall seconds of training, carried across resumes through the checkpoints."""

  def __init__(self, before: float):
    self.before, self.start = before, time.perf_counter()

  def total(self) -> float:
    return self.before + time.perf_counter() - self.start


def _starting_state(c, program: TrainProgram, checkpointer: Checkpointer, mesh):
  """(state, step, train seconds so far, the run a fine-tune starts from or None): the latest
  checkpoint of this run, else the parameters (and optionally the optimizer) of config.init_from,
  else a fresh initialization. Never a fresh start over checkpoints that were set aside."""
  restored = checkpointer.restore_latest(program.abstract_state_with_shardings())
  if restored is not None:
    state, meta = restored
    log.info("resumed from %s at step %d", checkpointer.directory, meta["step"])
    return state, int(meta["step"]), float(meta["train_seconds"]), None
  set_aside = checkpointer.set_aside()
  if set_aside:
    raise workdir_lib.WorkdirError(
        f"every checkpoint of this run was set aside as damaged ({checkpointer.quarantine}: "
        f"{', '.join(set_aside)}); lcx does not start it over from step 0. To start over, move "
        f"{checkpointer.quarantine} away, or pass a new --workdir")
  if not c.init_from:
    return program.init(), 0, 0.0, None
  if c.init_optimizer:
    state, meta = runs.restore_state(c.init_from, program.abstract_state_with_shardings())
    state["step"] = state["step"] * 0  # the schedule restarts
  elif c.get("finetune_changes"):  # another model: the source's parameters where they fit
    params, meta, report = runs.restore_params_changed(c.init_from, c, program.init()["params"],
                                                       mesh)
    log.info("finetune_changes %s: fresh parameters %s; left out of %s: %s",
             tuple(c.finetune_changes), report["fresh"] or "none", c.init_from,
             report["dropped"] or "none")
    state = program.init_from_params(params)
  else:
    _, params, meta = runs.restore_params(c.init_from, c, mesh)
    state = program.init_from_params(params)
  log.info("fine-tuning from %s at its step %d", c.init_from, meta["step"])
  # Its step and costs go into this run's summary, for reports to add up.
  return state, 0, 0.0, {"workdir": c.init_from, **meta}


def _check_savable(program: TrainProgram, state, batch, step: int, last_saved) -> None:
  """TrainingDiverged unless the state about to be saved is finite and can train on: its loss
  and gradient norm finite, and so its update."""
  health = program.health(state, batch)
  if not (np.isfinite(health["loss"]) and np.isfinite(health["grad_norm"])
          and health["state_finite"]):
    raise TrainingDiverged(
        f"the state after step {step} cannot train on (its loss {float(health['loss'])}, gradient "
        f"norm {float(health['grad_norm'])}); stopped without checkpointing it (last checkpoint: "
        f"{last_saved or 'none'}; lower train.learning_rate or raise train.warmup_steps)")


def train_and_evaluate(config, workdir, devices=None) -> dict:
  """Trains (or resumes) the run in workdir; returns a summary of where it ended."""
  c, devices = _resolve(config, devices)  # a bad config leaves nothing behind
  new = not pathlib.Path(workdir).expanduser().exists()
  workdir = workdir_lib.prepare(workdir)  # before anything is built
  is_main = jax.process_index() == 0
  try:
    with contextlib.ExitStack() as stack:
      if is_main:
        stack.enter_context(workdir_lib.TrainingLock(workdir))
      workdir_lib.check_resume(workdir, c, is_main)
      return _train(c, devices, workdir, is_main)
  except BaseException:
    if new and is_main:  # a start refused before it wrote anything leaves no workdir behind
      workdir_lib.remove_if_unused(workdir)
    raise


def _train(c, devices, workdir: pathlib.Path, is_main: bool) -> dict:
  mesh, stream, program, evaluator = _build(c, devices)
  if is_main:
    write_atomic(workdir / layout.CONFIG, c.to_json_best_effort(indent=2) + "\n")
    log.info("resolved config:\n%s", c)

  counts = count_params(program.abstract_state["params"])
  tokens_per_step = c.data.batch_size * c.data.seq_len
  peak = c.train.peak_flops or measure_peak_flops(mesh, c.model.compute_dtype)

  checkpointer = Checkpointer(workdir, c.checkpoint.keep)
  cleanup = contextlib.ExitStack()
  cleanup.callback(checkpointer.close)  # runs last: waits for the last save
  with cleanup:
    state, step, seconds_before, source = _starting_state(c, program, checkpointer, mesh)
    writers, eval_writers = [], []
    if is_main:
      wandb_writer = WandbWriter(c.wandb, workdir, c.to_dict(), run_name=workdir.name)
      cleanup.callback(wandb_writer.close)
      writers = [JsonlWriter(workdir / layout.METRICS, step), wandb_writer]
      eval_writers = [JsonlWriter(workdir / layout.EVAL_METRICS, step), wandb_writer]
      for writer in (writers[0], eval_writers[0]):
        cleanup.callback(writer.close)
    progress = cleanup.enter_context(contextlib.closing(
        ProgressBar(c.train.steps, step, enabled=is_main)))
    clock = _TrainClock(seconds_before)
    def flops(causal):
      span, memory_keys = program.model_cfg.attention_context(c.data.seq_len, causal)
      return flops_per_token(counts["non_embedding"], c.model.n_layers,
                             c.model.n_heads * c.model.head_dim, span, causal, memory_keys)

    flops_token = flops(causal=False)
    record = _Recorder(writers, progress, log_every=c.train.log_every, last_step=c.train.steps,
                       tokens_per_step=tokens_per_step, peak_flops=peak,
                       train_seconds=clock.total, flops_per_token=flops_token,
                       causal_flops_per_token=flops(causal=True))
    batches = cleanup.enter_context(contextlib.closing(stream.iterate(step)))
    preempted, last_saved = False, None
    with _StopFlag() as stop:
      pending = None
      while step < c.train.steps:
        checkpointer.raise_if_failed()  # a save that failed in the background stops the run
        batch = program.global_batch(next(batches))
        state, metrics = program.step(state, batch)
        step += 1
        if pending is not None:
          record(*pending)
        pending = (step, metrics)
        preempted = stop.reached(step)
        if step % c.checkpoint.every_steps == 0 or step == c.train.steps or preempted:
          record(*pending)
          pending = None
          _check_savable(program, state, batch, step, last_saved)
          checkpointer.save(step, state, {
              "step": step, "tokens_seen": step * tokens_per_step,
              "flops_seen": step * tokens_per_step * flops_token,
              "train_seconds": clock.total(), "data_position": step * c.data.batch_size})
          last_saved = step
        if evaluator is not None and (step % c.eval.every_steps == 0 or step == c.train.steps):
          eval_record = evaluator(step, state["params"])
          for writer in eval_writers:
            writer.write(eval_record)
        if preempted:
          log.warning("%s: saved a checkpoint at step %d in %s; exiting",
                      "Ctrl-C" if stop.interrupted else "SIGTERM", step, checkpointer.directory)
          break

  last = record.last or {}
  # An interrupted run is unfinished like a preempted one (a sweep resumes it); it says which.
  summary = {"workdir": str(workdir), "step": step, "preempted": preempted,
             "interrupted": preempted and stop.interrupted,
             "params": counts["total"], "non_embedding_params": counts["non_embedding"],
             "final_loss": last.get("loss"), "tokens_per_second": last.get("tokens_per_second"),
             "mfu": last.get("mfu"), "mfu_causal": last.get("mfu_causal"),
             "train_seconds": clock.total(),
             "peak_memory_bytes": peak_memory_bytes(),
             "tokens_seen": step * tokens_per_step,
             "flops_seen": step * tokens_per_step * flops_token,
             "init_from": source,
             "metrics": str(workdir / layout.METRICS), "checkpoints": str(checkpointer.directory),
             "config": str(workdir / layout.CONFIG),
             "wandb": wandb_writer.directory if is_main else None}
  if is_main:
    write_atomic(workdir / layout.SUMMARY, json.dumps(summary, indent=2) + "\n")
  return summary
