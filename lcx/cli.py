"""What the command-line entry points share: quiet library logs, one line per failure, the exit
statuses launchers act on."""
import logging
import os
import sys
import warnings

from absl import app
from absl import logging as absl_logging

from lcx import overrides as overrides_lib

# Exit statuses that launchers act on. lcx.train stopped on a preemption signal after saving a
# checkpoint: not finished, run it again to resume (EX_TEMPFAIL, "try again later"); slurm.sbatch
# requeues the job on it, the sweep marks the stage stopped rather than done or failed.
PREEMPTED_EXIT_CODE = 75
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C, as the shell reports it


def quiet_library_logs() -> None:
  """Library logs show only what is fatal; lcx's own logger speaks at INFO.

  Orbax logs each failure of its background threads with a traceback (dozens for one full disk);
  lcx catches those failures itself and reports each in one line.
  """
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("absl", "asyncio"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  logging.getLogger("lcx").setLevel(logging.INFO)
  # absl's flag parsing resets the levels set here; a filter stays. TFDS warns of every text_dir
  # and jsonl dataset that it has a config of its own, which is how they are meant to be built.
  logging.getLogger("absl").addFilter(_not_tfds_custom_config)
  sys.unraisablehook = _unraisable
  # A failed save leaves orbax's unfinished write coroutines behind; Python warns of each when it
  # collects them at exit, after lcx's one line, which would then no longer be the last.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def _not_tfds_custom_config(record: logging.LogRecord) -> bool:
  return not record.getMessage().startswith("Using custom data configuration")


def _unraisable(info) -> None:
  # Tensorstore calls back into asyncio loops that orbax has already closed after a failed save;
  # the RuntimeError it reports for each is noise once lcx has reported the failure.
  if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
    return
  # A restore that fails on one array abandons orbax's reads of the others; Python reports each
  # one's own error (with a TensorStore spec of ~60 lines) when it collects it, after lcx has
  # already said which checkpoint is damaged and what it did about it.
  if _is_orbax_coroutine(info.object):
    return
  sys.__unraisablehook__(info)


def _is_orbax_coroutine(obj) -> bool:
  code = getattr(obj, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def os_error(e: OSError) -> str:
  """An OSError as 'path: reason', without its errno tuple."""
  return f"{e.filename or 'a file'}: {e.strerror or e}"


def out_of_memory(e: Exception) -> bool:
  """Whether an XLA runtime error is an allocation that failed (device or host memory)."""
  return "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e)


def run(main) -> None:
  """absl's app.run for an entry point taking `--config.a.b=v` overrides: they are taken out of
  the arguments before absl parses them (it would refuse them as unknown flags) and passed to
  main(argv, overrides)."""
  rest, overrides = overrides_lib.split_argv(sys.argv[1:])
  app.run(lambda argv: main(argv, overrides), argv=[sys.argv[0]] + rest)
