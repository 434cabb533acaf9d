"""A study as code: Runs of ordered Stages, the helpers that build them, loading a study file and
checking its runs and their training configs before anything runs."""
import dataclasses
import itertools
import pathlib
import shlex

from lcx.data.tokenizers import SENTENCEPIECE
from lcx.overrides import load_config, load_module
from lcx.runs import layout


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # unique within its run; also the W&B job name and the evaluation's output name
  # "pretrain", "finetune" (both lcx.train), "evaluate" (lcx.evaluate), "import" (a pretrained
  # checkpoint made a run: lcx.convert import, its source the first of args), "longrope"
  # (lcx.longrope search on its source: RUN/longrope/s<factor>.json) or "drope" (lcx.drope fit on
  # its source: RUN/drope.json); an evaluation applies what those two found with
  # args=("--overrides_from=...",), a path relative to the study folder's run
  kind: str
  config: str = ""  # train and import stages: config file and preset, e.g. configs/pretrain.py:tiny
  overrides: tuple[str, ...] = ()  # "a.b=value", passed as --config.a.b=value
  source: str = ""  # finetune: the stage it starts from; evaluate: the stage it evaluates
  args: tuple[str, ...] = ()  # extra flags, e.g. ("--lengths=128,256",) for evaluate


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  stages: tuple[Stage, ...]
  tags: tuple[str, ...] = ()  # W&B tags: the scheme, the size, ...


KINDS = ("pretrain", "finetune", "evaluate", "import", "longrope", "drope")
STARTS = ("pretrain", "import")  # the kinds that make a run from nothing of the study's
TUNES = layout.TUNING_KINDS  # commands on a trained stage that write what evaluations apply
CONFIGURED = ("pretrain", "finetune", "import")  # the kinds that take a config


def product(**axes) -> list[dict]:
  """Every combination of the axes' values, as dicts: product(a=[1, 2], b=[3]) ->
  [{a: 1, b: 3}, {a: 2, b: 3}]."""
  names = list(axes)
  return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def zip_(**axes) -> list[dict]:
  """The axes' values side by side; every axis must have the same length."""
  lengths = {len(v) for v in axes.values()}
  if len(lengths) > 1:
    raise ValueError(f"zip_ needs axes of one length, got {dict((k, len(v)) for k, v in axes.items())}")
  return [dict(zip(axes, values)) for values in zip(*axes.values())]


def load_sweep(spec: str) -> tuple[str, list[Run]]:
  """('study-arg', runs) from 'path/to/study.py:arg', checked for unique names and valid stages."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  module = load_module(path, "study file", "get_sweep")
  try:
    runs = module.get_sweep(arg) if arg else module.get_sweep()
  except ValueError as e:  # the study's own message, e.g. an unknown scale
    raise ValueError(f"study file {path}: {e}") from None
  if not isinstance(runs, (list, tuple)) or not all(isinstance(r, Run) for r in runs):
    raise ValueError(f"study file {path}: get_sweep({arg!r}) must return a list of "
                     f"lcx.sweep.Run, not {type(runs).__name__}")
  runs = list(runs)
  check_runs(runs)
  return f"{file.stem}-{arg}" if arg else file.stem, runs


def check_runs(runs: list[Run]) -> None:
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"run names must be unique; repeated: {', '.join(duplicates)}")
  for run in runs:
    seen = set()
    for stage in run.stages:
      where = f"run {run.name!r} stage {stage.name!r}"
      if stage.kind not in KINDS:
        raise ValueError(f"{where}: kind {stage.kind!r} is unknown; allowed: {', '.join(KINDS)}")
      if stage.name in seen:
        raise ValueError(f"{where}: the name is used twice in the run")
      if stage.kind not in STARTS and stage.source not in seen:
        raise ValueError(f"{where}: source {stage.source!r} must name an earlier stage of the run")
      seen.add(stage.name)


_CORPUS_FIELDS = tuple(f"data.{f}" for f in ("name", "data_dir", "text_dir", "text_glob", "text_key"))


def with_overrides(runs: list[Run], overrides: tuple[str, ...]) -> list[Run]:
  """The runs with `overrides` ("a.b=value", from the sweep's command line) added to every
  training stage's; evaluations read the config their run saved."""
  if not overrides:
    return runs
  return [dataclasses.replace(run, stages=tuple(
      dataclasses.replace(s, overrides=(*s.overrides, *overrides)) if s.kind in CONFIGURED else s
      for s in run.stages)) for run in runs]


def check_train_configs(runs: list[Run], local_files: bool) -> None:
  """Every training stage's config loads with its overrides (an unknown field stops the study
  now, not a job hours later); with local_files, a SentencePiece model its pretraining names
  exists, or the study stops with the command that trains it."""
  for run in runs:
    for stage in run.stages:
      if stage.kind not in CONFIGURED:
        continue
      try:
        data = load_config(stage.config, stage.overrides).data
      except ValueError as e:
        raise ValueError(f"run {run.name!r} stage {stage.name!r}: {e}") from None
      path = data.tokenizer.removeprefix(SENTENCEPIECE)
      if (local_files and stage.kind == "pretrain" and data.tokenizer.startswith(SENTENCEPIECE)
          and not pathlib.Path(path).expanduser().exists()):
        corpus = " ".join(shlex.quote(f"--config.{o}") for o in stage.overrides
                          if o.split("=")[0] in _CORPUS_FIELDS)
        raise ValueError(
            f"run {run.name!r} trains with the tokenizer {data.tokenizer}, which does not exist "
            f"yet: train it with\n  python -m lcx.tokenizer train --config {stage.config} "
            f"{corpus}".rstrip())
